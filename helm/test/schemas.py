"""Schema validation of rendered manifests.

Built-in kinds: kubernetes-validate's JSON schemas for the given Kubernetes version, strict
(an unknown field is an error, as `kubectl apply --validate=strict` would make it).
ServiceMonitor and Certificate: JSON schemas generated from cloudcoil's models of the
prometheus-operator and cert-manager CRDs, made strict the same way.
"""

from __future__ import annotations

import functools

import jsonschema
import kubernetes_validate


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict]:
    from cloudcoil.models.cert_manager.v1 import Certificate
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    return {
        ("cert-manager.io/v1", "Certificate"): _strict(Certificate.model_json_schema(by_alias=True)),
        ("monitoring.coreos.com/v1", "ServiceMonitor"): _strict(ServiceMonitor.model_json_schema(by_alias=True)),
    }


def _strict(schema):
    """Every object schema that lists its properties refuses others."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def validate(obj: dict, version: str) -> str | None:
    """None if `obj` is valid, else what is wrong with it."""
    crd = _crd_schemas().get((obj.get("apiVersion"), obj.get("kind")))
    try:
        if crd is not None:
            jsonschema.validate(obj, crd)
        else:
            kubernetes_validate.validate(obj, version, strict=True)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        return f"{where}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"no schema: {e}"
    return None
