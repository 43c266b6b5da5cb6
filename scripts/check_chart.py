#!/usr/bin/env python3
"""Validates the Helm chart offline, for the default values and a few variants.

For each variant: `helm lint --strict` (Helm's own SDK, no helm binary), render, every
manifest checked by kubernetes-validate in strict mode against Kubernetes KUBE_VERSION, and
the rendered agent configuration accepted by `flowex check-config`, and the state
directory mounted from the node exactly when the configuration names one. Also checks
that every agent option (a collector's too) can be set from values, and that the schema
refuses bad values. Prints one line per check and ends with "N passed, M failed".

Usage: scripts/check_chart.py [path/to/flowex-binary]
(needs: pip install helm-python-sdk kubernetes-validate pyyaml; scripts/test.sh does it)
"""
import json
import os
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts", "flowex")
KUBE_VERSION = "1.30.0"
# Kinds whose schema kubernetes-validate does not ship (CRDs): checked for shape only.
CUSTOM_KINDS = {"ServiceMonitor"}

VARIANTS = {
    "default": {},
    "udp collector": {
        "collectors": [
            {"name": "ipfix", "address": "10.0.0.5:4739", "transport": "udp", "maxMessageSize": 1472}
        ]
    },
    "several collectors": {
        "collectors": [
            {"name": "aggregator", "address": "flow-aggregator.flow-aggregator.svc:4739", "transport": "tcp"},
            {"name": "nfacctd", "address": "[fd00::5]:2055", "transport": "udp", "templateRefresh": "1m",
             "maxReconnectDelay": "500ms"},
        ]
    },
    "cluster pod scope": {"config": {"kubernetes": {"podScope": "cluster"}}},
    "no state file": {"config": {"state": {"directory": ""}}},
    "monitoring, no rbac, tuned agent": {
        "metrics": {"port": 9500, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "rbac": {"create": False},
        "config": {
            "conntrack": {"pollInterval": "10s", "zones": [0, 7]},
            "export": {"activeTimeout": "30s", "idleTimeout": "1m", "observationDomainId": 7,
                       "podCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"], "shutdownTimeout": "25s"},
            "deny": {"enabled": False},
            "attribution": {"maxSockets": 262144},
            "kubernetes": {"enabled": False},
            "logging": {"level": "debug", "format": "text", "summaryInterval": "5m"},
            "state": {"directory": "/var/lib/flowex-test"},
        },
    },
}

# Values the schema must refuse, with the path its message must name.
BAD_VALUES = [
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"collectors": [{"name": "a", "address": "collector:70000"}]}, "/collectors/0/address"),
    ({"collectors": []}, "/collectors"),
    ({"config": {"export": {"activeTimeout": "5 seconds"}}}, "/config/export/activeTimeout"),
    ({"config": {"conntrack": {"pollInterval": "5s", "polInterval": "5s"}}}, "/config/conntrack"),
    ({"config": {"kubernetes": {"podScope": "namespace"}}}, "/config/kubernetes/podScope"),
    ({"config": {"export": {"shutdownTimeout": "20"}}}, "/config/export/shutdownTimeout"),
    ({"collectors": [{"name": "a", "address": "collector:4739", "maxReconnectDelay": "2 s"}]},
     "/collectors/0/maxReconnectDelay"),
    ({"config": {"state": {"directory": "var/lib/flowex"}}}, "/config/state/directory"),
]

# Agent keys the chart sets itself rather than from values.config.
SET_BY_CHART = {"nodeName", "export.collectors", "attribution.procRoot", "metrics.listen"}


def key_paths(tree, prefix=""):
    """Dotted paths of the leaves (and lists) of a mapping."""
    for key, value in tree.items():
        path = prefix + key
        if isinstance(value, dict):
            yield from key_paths(value, path + ".")
        else:
            yield path

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail and not ok else ''}")


def flowex_binary():
    if len(sys.argv) > 1:
        return sys.argv[1]
    for profile in ("debug", "release"):
        path = os.path.join(ROOT, "target", profile, "flowex")
        if os.path.exists(path):
            return path
    subprocess.run(["cargo", "build", "-q", "-p", "flowex-agent", "--bin", "flowex"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "debug", "flowex")


def main():
    flowex = flowex_binary()
    chart = helm.Chart.load(CHART)

    # Every option of the agent can be set from values.
    defaults = yaml.safe_load(subprocess.run([flowex, "print-default-config"], capture_output=True,
                                             text=True, check=True).stdout)
    with open(os.path.join(CHART, "values.yaml")) as file:
        chart_values = yaml.safe_load(file)
    settable = set(key_paths(chart_values["config"])) | SET_BY_CHART
    missing = sorted(set(key_paths(defaults)) - settable)
    check("every agent option can be set from values", not missing, str(missing))
    # A collector's keys: the chart's top-level `collectors` items, as the schema allows them.
    with open(os.path.join(CHART, "values.schema.json")) as file:
        schema = json.load(file)
    collector_keys = set(schema["properties"]["collectors"]["items"]["properties"])
    missing = sorted(set(defaults["export"]["collectors"][0]) - collector_keys)
    check("every collector option can be set from values", not missing, str(missing))
    missing = sorted(set(defaults["export"]["collectors"][0]) - set(chart_values["collectors"][0]))
    check("the default collector in values.yaml sets every collector option", not missing, str(missing))
    for variant, values in VARIANTS.items():
        report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        check(f"{variant}: helm lint --strict", not problems, str(problems))

        try:
            chart.validate_schema(values)
            check(f"{variant}: values match the schema", True)
        except helm.HelmError as error:
            check(f"{variant}: values match the schema", False, str(error))

        manifests = chart.render(values, name="flowex", namespace="flowex-system", is_install=True)
        documents = []
        for path, text in manifests.items():
            if path.endswith(".yaml"):
                documents += [d for d in yaml.safe_load_all(text) if d]
        kinds = sorted(d["kind"] for d in documents)
        expected = {"ConfigMap", "DaemonSet", "ServiceAccount", "Service"}
        check(f"{variant}: renders {', '.join(kinds)}", expected <= set(kinds), str(kinds))
        for document in documents:
            label = f"{variant}: {document['kind']} {document['metadata']['name']}"
            if document["kind"] in CUSTOM_KINDS:
                check(f"{label} (CRD, shape only)", "spec" in document and "apiVersion" in document)
                continue
            try:
                kubernetes_validate.validate(document, KUBE_VERSION, strict=True)
                check(f"{label} valid for Kubernetes {KUBE_VERSION}", True)
            except kubernetes_validate.ValidationError as error:
                check(f"{label} valid for Kubernetes {KUBE_VERSION}", False, str(error))

        config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["config.yaml"]
        if variant == "default":
            # scripts/check_image.sh checks it inside the image too.
            os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
            with open(os.path.join(ROOT, "target", "chart-default-config.yaml"), "w") as file:
                file.write(config)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
            file.write(config)
        try:
            out = subprocess.run([flowex, "check-config", file.name], capture_output=True, text=True)
            check(f"{variant}: flowex check-config accepts the rendered config",
                  out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr)
        finally:
            os.unlink(file.name)

        daemonset = next(d for d in documents if d["kind"] == "DaemonSet")
        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        security = container["securityContext"]
        check(f"{variant}: least privilege (no privileged, caps NET_ADMIN BPF PERFMON only)",
              security.get("privileged") is False
              and security["capabilities"]["drop"] == ["ALL"]
              and sorted(security["capabilities"]["add"]) == ["BPF", "NET_ADMIN", "PERFMON"],
              str(security))

        # The state file outlives the pod only on the node: a hostPath at the configured
        # directory (the root filesystem is read-only), and nothing when there is none.
        directory = yaml.safe_load(config).get("state", {}).get("directory", "")
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"].get("volumes", [])}
        at_directory = [name for name, m in mounts.items() if directory and m["mountPath"] == directory]
        if directory:
            volume = volumes.get(at_directory[0], {}) if at_directory else {}
            host_path = volume.get("hostPath", {})
            mount = mounts.get(at_directory[0], {}) if at_directory else {}
            check(f"{variant}: state directory {directory} mounted writable from the node",
                  host_path.get("path") == directory and host_path.get("type") == "DirectoryOrCreate"
                  and not mount.get("readOnly", False),
                  f"mounts {sorted(mounts)}, volume {volume}")
        else:
            host_paths = sorted(v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v)
            check(f"{variant}: no state directory, no state volume",
                  "state" not in mounts and "state" not in volumes
                  and host_paths == ["/proc", "/sys/fs/bpf"],
                  f"mounts {sorted(mounts)}, host paths {host_paths}")
        if variant == "default":
            check("default: the agent keeps a state file",
                  directory == defaults["state"]["directory"], repr(directory))

    for values, path in BAD_VALUES:
        try:
            chart.validate_schema(values)
            check(f"schema refuses {values}", False, "accepted")
        except helm.HelmError as error:
            check(f"schema refuses {values}", path in str(error), str(error))

    passed = sum(results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
