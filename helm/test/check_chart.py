#!/usr/bin/env python3
"""Checks helm/portcullis with Helm's own engine, offline.

For the default values and each value set in helm/test/values/, the chart is linted (strict)
and rendered by helm-python-sdk (libhelm_c: Helm's Go SDK, no helm binary); every manifest is
validated against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail) or,
for ServiceMonitor and Certificate, against schemas generated from the CRDs' models; the
rendered portcullis.toml must pass `portcullis config check`; and what each value set is for
(replicas, PDB, certificates, mounts, probes...) is asserted.

    check_chart.py --portcullis target/debug/portcullis [--self-test] [CHART]

It also checks that every value is commented in values.yaml and listed in README.md.
--self-test then breaks copies of the chart in six ways and fails unless each is caught.
Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python as helm
import yaml

from expectations import EXPECTATIONS
from schemas import validate

HERE = Path(__file__).resolve().parent
KUBE_VERSIONS = ["1.30.0", "1.37.0"]


def value_sets() -> dict[str, dict]:
    sets = {"default": {}}
    for path in sorted((HERE / "values").glob("*.yaml")):
        sets[path.stem] = yaml.safe_load(path.read_text()) or {}
    return sets


def render(chart: Path, values: dict) -> dict[str, list[dict]]:
    """Template path -> the objects it renders (NOTES.txt kept as text under 'NOTES')."""
    with helm.Chart.load(chart) as loaded:
        out = loaded.render(values=values, name="pc", namespace="ops", is_install=True)
    docs: dict[str, list[dict]] = {}
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            docs["NOTES"] = [{"text": text}]
            continue
        objects = [d for d in yaml.safe_load_all(text) if d]
        if objects:
            docs[name] = objects
    return docs


def config_check(portcullis: str, toml_text: str) -> str | None:
    """None if `portcullis config check` accepts the rendered file, else its complaint."""
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp, "token")
        token.write_text("s3cret\n")
        text = toml_text.replace("/etc/portcullis/admin/token", str(token))
        path = Path(tmp, "portcullis.toml")
        path.write_text(text)
        env = dict(os.environ, CORP_PASSWORD="x")
        done = subprocess.run([portcullis, "config", "check", str(path)], env=env,
                              capture_output=True, text=True, timeout=60)
        return None if done.returncode == 0 else done.stdout + done.stderr


def check_set(chart: Path, name: str, values: dict, portcullis: str) -> list[str]:
    failures = []
    expect = EXPECTATIONS[name]
    lint = helm.lint(chart, values, strict=True, namespace="ops")
    for message in lint.get("messages", []):
        if message["severity"] >= 2:
            failures.append(f"lint: {message['path']}: {message['error']}")
    failures += [f"lint: {e}" for e in lint.get("errors") or []]
    try:
        docs = render(chart, values)
    except helm.HelmError as e:
        if expect.get("render_fails") and expect["render_fails"] in str(e):
            return failures
        return failures + [f"render: {e}"]
    if expect.get("render_fails"):
        return failures + [f"rendered, but must fail with {expect['render_fails']!r}"]
    objects = [o for template, objs in docs.items() if template != "NOTES" for o in objs]
    for obj in objects:
        for version in KUBE_VERSIONS:
            problem = validate(obj, version)
            if problem:
                failures.append(f"{obj.get('kind')}/{obj['metadata']['name']} (k8s {version}): {problem}")
    config = next((o for o in objects if o["kind"] == "ConfigMap" and "portcullis.toml" in (o.get("data") or {})), None)
    if config is None:
        return failures + ["no ConfigMap with portcullis.toml"]
    toml_text = config["data"]["portcullis.toml"]
    complaint = config_check(portcullis, toml_text)
    if complaint:
        failures.append(f"portcullis config check refused the rendered config:\n{complaint}\n{toml_text}")
        return failures
    world = {"objects": objects, "config": tomllib.loads(toml_text), "notes": docs["NOTES"][0]["text"]}
    for check in expect["checks"]:
        try:
            check(world)
        except (AssertionError, KeyError, StopIteration, ValueError) as e:
            failures.append(f"{check.__name__}: {type(e).__name__}: {e}")
    return failures


def value_keys(values_yaml: str) -> list[tuple[str, bool]]:
    """(dotted path, has a comment line right above) of every key line in values.yaml."""
    keys, stack, previous = [], [], ""
    for line in values_yaml.splitlines():
        stripped = line.strip()
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
            keys.append((".".join(k for _, k in stack), previous.startswith("#")))
        if stripped:
            previous = stripped
    return keys


def documentation_failures(chart: Path) -> list[str]:
    """Every value in the README's table exists and is commented; no value is undocumented."""
    readme = (chart / "README.md").read_text().split("## Values", 1)[-1]
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))
    keys = value_keys((chart / "values.yaml").read_text())
    paths = {path for path, _ in keys}
    failures = [f"README documents {p}, which values.yaml lacks" for p in sorted(documented - paths)]
    for path, commented in keys:
        if path in documented and not commented:
            failures.append(f"values.yaml: {path} has no comment above it")
        inside = any(path.startswith(d + ".") for d in documented)
        section = any(d.startswith(path + ".") for d in documented)
        if path not in documented and not inside and not section:
            failures.append(f"values.yaml: {path} is not in the README's values table")
    return failures


def check_chart(chart: Path, portcullis: str, quiet: bool = False) -> list[str]:
    """Every failure, each prefixed with its value set (or "docs")."""
    all_failures = [f"docs: {f}" for f in documentation_failures(chart)]
    if not quiet:
        print(f"{'FAIL' if all_failures else 'ok  '} {chart.name} values documented and commented")
        for f in all_failures:
            print(f"     {f}")
    for name, values in value_sets().items():
        failures = check_set(chart, name, values, portcullis)
        if not quiet:
            print(f"{'FAIL' if failures else 'ok  '} {chart.name} with {name} values")
            for f in failures:
                print(f"     {f}")
        all_failures += [f"{name}: {f}" for f in failures]
    return all_failures


# Each breaks a copy of the chart in a way one check layer must catch, and says how the
# failure must read: (file, text, replacement, expected in a failure).
BREAKAGES = {
    "template syntax": ("templates/service.yaml", "spec:", "spec:\n{{ if }}", "default: render:"),
    "field unknown to Kubernetes": (
        "templates/service.yaml", "targetPort: admin", "targetPrt: admin", "Service/pc-portcullis (k8s"),
    "field unknown to the ServiceMonitor CRD": (
        "templates/servicemonitor.yaml", "scheme: http", "schema: http", "ha: ServiceMonitor/pc-portcullis"),
    "config portcullis refuses": (
        "values.yaml", "cache_ttl_secs: 600", "cache_ttl: 600", "default: portcullis config check refused"),
    "writable root filesystem": (
        "values.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "default: runs_hardened"),
    "value without documentation": (
        "values.yaml", "stateSizeLimit: 256Mi", "stateSizeLimit: 256Mi\nundocumented: 1", "docs: values.yaml: undocumented"),
}


def self_test(chart: Path, portcullis: str) -> int:
    missed = 0
    for what, (file, old, new, expected) in BREAKAGES.items():
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp, chart.name)
            shutil.copytree(chart, copy)
            target = copy / file
            text = target.read_text()
            if old not in text:
                print(f"FAIL self-test {what}: {old!r} not found in {file}")
                missed += 1
                continue
            target.write_text(text.replace(old, new, 1))
            failures = check_chart(copy, portcullis, quiet=True)
            caught = any(expected in f for f in failures)
            print(f"{'ok  ' if caught else 'FAIL'} self-test: a {what} is caught")
            if not caught:
                print(f"     no failure reads {expected!r}: {failures}")
            missed += not caught
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart", nargs="?", default=str(HERE.parent / "portcullis"))
    parser.add_argument("--portcullis", required=True, help="the portcullis binary, for config check")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    chart = Path(args.chart).resolve()
    helm.disable_logging()
    failed = len({f.split(":")[0] for f in check_chart(chart, args.portcullis)})
    total = len(value_sets()) + 1
    if args.self_test:
        failed += self_test(chart, args.portcullis)
        total += len(BREAKAGES)
    print(f"helm: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
