"""What each value set must render, beyond schema validity.

A check takes the rendered world ({"objects", "config" (parsed portcullis.toml), "notes"})
and raises AssertionError with a reason.
"""

from __future__ import annotations

import json
from collections import Counter


def of_kind(world, kind):
    return [o for o in world["objects"] if o["kind"] == kind]


def one(world, kind):
    found = of_kind(world, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod(world):
    return one(world, "Deployment")["spec"]["template"]["spec"]


def container(world):
    return pod(world)["containers"][0]


def mounts(world):
    return {m["mountPath"]: m for m in container(world)["volumeMounts"]}


def volume(world, name):
    return next(v for v in pod(world)["volumes"] if v["name"] == name)


def kinds(expected):
    def rendered_kinds(world):
        got = Counter(o["kind"] for o in world["objects"])
        assert got == Counter(expected), f"kinds {dict(got)} != {expected}"
    return rendered_kinds


def replicas(n):
    def deployment_replicas(world):
        assert one(world, "Deployment")["spec"]["replicas"] == n
    return deployment_replicas


# --- checks every value set must pass ---------------------------------------------------

def runs_hardened(world):
    spec, c = pod(world), container(world)
    assert spec["securityContext"]["runAsNonRoot"] is True, "pod may run as root"
    assert spec["securityContext"]["runAsUser"] == 65532
    assert c["securityContext"]["readOnlyRootFilesystem"] is True, "root filesystem is writable"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    assert spec["automountServiceAccountToken"] is False


def probes_on_admin_port(world):
    c = container(world)
    admin = next(p for p in c["ports"] if p["name"] == "admin")["containerPort"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert world["config"]["listen"]["admin"] == f"0.0.0.0:{admin}"


def listeners_bound_for_the_cluster(world):
    listen = world["config"]["listen"]
    assert listen["registry"] == "0.0.0.0:5443", listen
    service_ports = {p["name"]: p["port"] for p in one(world, "Service")["spec"]["ports"]}
    assert service_ports["registry"] == 5443 and service_ports["admin"] == 9464, service_ports
    # Upload sessions are per pod: a client's chunks must reach the pod that started them.
    assert one(world, "Service")["spec"]["sessionAffinity"] == "ClientIP"
    if listen["proxy"] != "off":
        assert listen["proxy"] == "0.0.0.0:3128" and service_ports["proxy"] == 3128
    else:
        assert "proxy" not in service_ports


def state_and_policies_mounted(world):
    m = mounts(world)
    assert m["/var/lib/portcullis"]["name"] == "state"
    assert world["config"]["state_dir"] == "/var/lib/portcullis"
    policies = m["/etc/portcullis/policies"]
    # A subPath mount would never see ConfigMap updates.
    assert "subPath" not in policies, "policies mounted with subPath: updates would not reach the pod"
    assert "configMap" in volume(world, policies["name"])


def config_names_the_service(world):
    names = world["config"]["tls"]["names"]
    assert "pc-portcullis.ops.svc" in names and "pc-portcullis.ops.svc.cluster.local" in names, names


COMMON = [runs_hardened, probes_on_admin_port, listeners_bound_for_the_cluster,
          state_and_policies_mounted, config_names_the_service]


# --- per value set --------------------------------------------------------------------

def state_is_an_empty_dir(world):
    assert "emptyDir" in volume(world, "state")


def notes_warn_about_per_pod_cas(world):
    assert "WARNING: no CA Secret" in world["notes"]


def ca_from_the_secret(secret):
    def ca_files_come_from_a_secret(world):
        m = mounts(world)
        assert m["/var/lib/portcullis/ca.crt"]["subPath"] == "ca.crt"
        assert m["/var/lib/portcullis/ca.key"]["subPath"] == "ca.key"
        ca = volume(world, m["/var/lib/portcullis/ca.key"]["name"])["secret"]
        assert ca["secretName"] == secret, ca
        assert {i["path"] for i in ca["items"]} == {"ca.crt", "ca.key"}
    return ca_files_come_from_a_secret


def spread_and_budgeted(world):
    anti = pod(world)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert one(world, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


def scraped_with_the_token(world):
    endpoint = one(world, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "portcullis-admin", "key": "token"}
    assert world["config"]["listen"]["admin_token_file"] == "/etc/portcullis/admin/token"


def dashboard_shipped(world):
    board = next(o for o in of_kind(world, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["portcullis.json"])["panels"], "dashboard has no panels"


def corp_registry_configured(world):
    hosts = [r["host"] for r in world["config"]["registry"]]
    assert hosts == ["docker.io", "registry.corp.example.com"], hosts
    assert world["config"]["registry"][1]["connect_timeout_secs"] == 5
    assert world["config"]["listen"]["mirror"] == "0.0.0.0:5444"
    policies = next(o for o in of_kind(world, "ConfigMap") if o["metadata"]["name"].endswith("-policies"))
    assert "site.toml" in policies["data"]


def certificates_from_cert_manager(world):
    certs = {c["metadata"]["name"]: c["spec"] for c in of_kind(world, "Certificate")}
    serving, ca = certs["pc-portcullis-tls"], certs["pc-portcullis-ca"]
    assert "pc-portcullis.ops.svc" in serving["dnsNames"], serving["dnsNames"]
    assert ca["isCA"] is True and ca["privateKey"]["encoding"] == "PKCS8"
    assert serving["issuerRef"]["name"] == ca["issuerRef"]["name"] == "corp-ca-issuer"
    tls = mounts(world)["/etc/portcullis/tls"]
    assert volume(world, tls["name"])["secret"]["secretName"] == "pc-portcullis-tls"
    assert world["config"]["tls"]["cert_file"] == "/etc/portcullis/tls/tls.crt"
    ca_volume = volume(world, mounts(world)["/var/lib/portcullis/ca.key"]["name"])["secret"]
    assert ca_volume["secretName"] == "pc-portcullis-ca"
    assert {i["key"]: i["path"] for i in ca_volume["items"]} == {"tls.crt": "ca.crt", "tls.key": "ca.key"}


def rolls_without_downtime(world):
    strategy = one(world, "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}, strategy


def own_claim_recreated(world):
    claim = one(world, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert volume(world, "state")["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert one(world, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in pod(world) and "lifecycle" not in container(world)
    assert volume(world, "policies")["configMap"]["name"] == "site-policies"
    assert "/var/lib/portcullis/ca.key" not in mounts(world)


def shared_claim(world):
    claim = one(world, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volume(world, "state")["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


EXPECTATIONS = {
    "default": {"checks": COMMON + [
        kinds({"ConfigMap": 2, "Deployment": 1, "Service": 1}), replicas(1),
        state_is_an_empty_dir, notes_warn_about_per_pod_cas, rolls_without_downtime]},
    "ha": {"checks": COMMON + [
        kinds({"ConfigMap": 3, "Deployment": 1, "Service": 1, "PodDisruptionBudget": 1, "ServiceMonitor": 1}),
        replicas(3), ca_from_the_secret("portcullis-ca"), spread_and_budgeted, scraped_with_the_token,
        dashboard_shipped, corp_registry_configured, state_is_an_empty_dir]},
    "cert-manager": {"checks": COMMON + [
        kinds({"ConfigMap": 2, "Deployment": 1, "Service": 1, "Certificate": 2, "PersistentVolumeClaim": 1}),
        replicas(2), certificates_from_cert_manager, shared_claim, rolls_without_downtime]},
    "single-persistent": {"checks": COMMON + [
        kinds({"ConfigMap": 1, "Deployment": 1, "Service": 1, "PersistentVolumeClaim": 1}),
        replicas(1), own_claim_recreated]},
    "shared-state-without-ca": {"render_fails": "give the CA as a Secret", "checks": []},
}
