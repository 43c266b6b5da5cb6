#!/usr/bin/env python3
"""Validates the Helm chart offline, for the default values and a few variants.

For each variant: `helm lint --strict` (Helm's own SDK, no helm binary), render, every
manifest checked by kubernetes-validate in strict mode against Kubernetes KUBE_VERSION, and
the rendered agent configuration accepted by `flowex check-config`, the state
directory mounted from the node exactly when the configuration names one, certificateMounts
as read-only volumes, the Roles and RoleBindings of tls.antrea (exactly the CA ConfigMaps
and client Secrets, in their namespaces, nothing when no collector reads them) and the
collectors in NOTES. Also checks that every agent option (a collector's and its TLS
settings' too) can be set from values, and that the schema refuses bad values. Prints one
line per check and ends with "N passed, M failed".

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
    # Antrea's Flow Aggregator as Antrea's agents reach it: its CA and client pair read
    # through the API from its namespace (default object names).
    "flow aggregator over grpc (tls.antrea)": {
        "collectors": [
            {"name": "flow-aggregator", "address": "flow-aggregator.flow-aggregator.svc:14739",
             "transport": "grpc",
             "tls": {"antrea": True, "serverName": "flow-aggregator.flow-aggregator.svc"}}
        ]
    },
    "tls.antrea, names overridden": {
        "collectors": [
            {"name": "aggregator", "address": "flow-aggregator.flow-aggregator.svc:4739", "transport": "tls",
             "aggregator": "antrea",
             "tls": {"antrea": True, "caConfigMap": "certs/ca", "clientSecret": "certs/client",
                     "minVersion": "1.3"}}
        ]
    },
    "tls.antrea, two namespaces": {
        "collectors": [
            {"name": "flow-aggregator", "address": "flow-aggregator.flow-aggregator.svc:14739",
             "transport": "grpc", "tls": {"antrea": True}},
            {"name": "other", "address": "collector.certs.svc:4740", "transport": "tls",
             "tls": {"antrea": True, "caConfigMap": "certs/ca", "clientSecret": "certs/client"}},
        ]
    },
    # The CA and the pair in different namespaces, two CAs in one, a Secret named twice:
    # one rule per namespace and resource, never a rule without resourceNames.
    "tls.antrea, CA and client pair apart": {
        "collectors": [
            {"name": "a", "address": "a.example:14739", "transport": "grpc",
             "tls": {"antrea": True, "caConfigMap": "ca-ns/ca", "clientSecret": "client-ns/client"}},
            {"name": "b", "address": "b.example:14739", "transport": "grpc",
             "tls": {"antrea": True, "caConfigMap": "ca-ns/other-ca", "clientSecret": "client-ns/client"}},
        ]
    },
    "tls.antrea, no rbac": {
        "rbac": {"create": False},
        "collectors": [
            {"name": "flow-aggregator", "address": "flow-aggregator.flow-aggregator.svc:14739",
             "transport": "grpc", "tls": {"antrea": True}}
        ],
    },
    "tls from mounted files": {
        "collectors": [
            {"name": "ipfix-tls", "address": "collector.example:4740", "transport": "tls",
             "tls": {"caFile": "/etc/flowex/ca/ca.crt", "certFile": "/etc/flowex/client/tls.crt",
                     "keyFile": "/etc/flowex/client/tls.key", "serverName": "collector.example"}}
        ],
        "certificateMounts": [
            {"name": "ca", "configMap": "my-ca", "mountPath": "/etc/flowex/ca"},
            {"name": "client", "secret": "my-client-tls", "mountPath": "/etc/flowex/client"},
        ],
    },
    "no state file": {"config": {"state": {"directory": ""}}},
    "a collector with a filter": {
        "collectors": [
            {"name": "dns", "address": "10.0.0.5:4739", "transport": "udp",
             "filter": {"protocols": ["udp", 17], "destinationPorts": [53, "5353-5354"],
                        "excludeSourceCIDRs": ["10.244.0.0/16"], "flowTypes": ["toExternal"]}}
        ]
    },
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


def role_rules(configmaps, secrets):
    """The rules of a tls.antrea Role: get, list, watch on exactly these objects."""
    rules = []
    for resource, names in (("configmaps", configmaps), ("secrets", secrets)):
        if names:
            rules.append({"apiGroups": [""], "resources": [resource], "resourceNames": names,
                          "verbs": ["get", "list", "watch"]})
    return rules


# The Roles (namespace: rules) each variant renders for tls.antrea; none for the others.
# The example values files under charts/flowex/examples render and pass like the variants.
for _name in sorted(os.listdir(os.path.join(CHART, "examples"))):
    with open(os.path.join(CHART, "examples", _name)) as _file:
        VARIANTS["example " + _name] = yaml.safe_load(_file)

ROLES = {
    "example antrea-flow-aggregator.yaml": {
        "flow-aggregator": role_rules(["flow-aggregator-ca"], ["flow-aggregator-client-tls"]),
    },
    "flow aggregator over grpc (tls.antrea)": {
        "flow-aggregator": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["flow-aggregator-ca"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["flow-aggregator-client-tls"],
             "verbs": ["get", "list", "watch"]},
        ]
    },
    "tls.antrea, names overridden": {"certs": role_rules(["ca"], ["client"])},
    "tls.antrea, two namespaces": {
        "certs": role_rules(["ca"], ["client"]),
        "flow-aggregator": role_rules(["flow-aggregator-ca"], ["flow-aggregator-client-tls"]),
    },
    "tls.antrea, CA and client pair apart": {
        "ca-ns": role_rules(["ca", "other-ca"], []),
        "client-ns": role_rules([], ["client"]),
    },
}
ROLE_NAME = "flowex-collector-tls"
SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "flowex", "namespace": "flowex-system"}

# Values the schema must refuse, with the path its message must name (and words it must
# contain, where the path alone does not say why).
GRPC = {"name": "flow-aggregator", "address": "flow-aggregator.flow-aggregator.svc:14739", "transport": "grpc"}
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
    ({"collectors": [{"name": "a", "address": "collector:4739", "transport": "sctp"}]},
     "/collectors/0/transport"),
    ({"collectors": [dict(GRPC, tls={"antrea": True, "caConfigmap": "flow-aggregator/ca"})]},
     "/collectors/0/tls", "'caConfigmap' not allowed"),
    ({"collectors": [dict(GRPC, tls={"antrea": True, "minVersion": "1.1"})]}, "/collectors/0/tls/minVersion"),
    # YAML's 1.3 is a number: the agent wants the string "1.3".
    ({"collectors": [dict(GRPC, tls={"antrea": True, "minVersion": 1.3})]}, "/collectors/0/tls/minVersion"),
    ({"collectors": [dict(GRPC, tls={"antrea": True, "clientSecret": "flow-aggregator-client-tls"})]},
     "/collectors/0/tls/clientSecret"),
    ({"collectors": [dict(GRPC, tls={"antrea": True, "caConfigMap": "flow-aggregator/"})]},
     "/collectors/0/tls/caConfigMap"),
    ({"collectors": [dict(GRPC, tls={"antrea": True, "caFile": "/etc/flowex/ca/ca.crt"})]},
     "/collectors/0/tls/caFile"),
    ({"collectors": [dict(GRPC, tls={"caFile": "/etc/flowex/ca/ca.crt", "certFile": "/etc/flowex/client/tls.crt"})]},
     "/collectors/0/tls", "'keyFile' required"),
    ({"collectors": [dict(GRPC, tls={"serverName": "flow-aggregator.flow-aggregator.svc"})]},
     "/collectors/0/tls", "missing property 'caFile'"),
    ({"collectors": [GRPC]}, "/collectors/0", "missing property 'tls'"),
    ({"collectors": [dict(GRPC, transport="udp", tls={"antrea": True})]}, "/collectors/0/transport"),
    ({"collectors": [dict(GRPC, aggregator="flink")]}, "/collectors/0/aggregator"),
    ({"certificateMounts": [{"name": "ca", "configMap": "my-ca", "secret": "my-ca", "mountPath": "/etc/flowex/ca"}]},
     "/certificateMounts/0", "subschemas 0, 1 matched"),
    ({"certificateMounts": [{"name": "ca", "mountPath": "/etc/flowex/ca"}]}, "/certificateMounts/0", "none matched"),
    ({"certificateMounts": [{"name": "ca", "configMap": "my-ca", "mountPath": "/etc/flowex"}]},
     "/certificateMounts/0/mountPath"),
    ({"certificateMounts": [{"name": "ca", "configMap": "my-ca", "mountPath": "/etc/flowex/ca", "readOnly": False}]},
     "/certificateMounts/0", "'readOnly' not allowed"),
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

def agent_fields(flowex, config):
    """The keys the agent accepts where `config` has an unknown one (from its error)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        file.write(config)
    try:
        out = subprocess.run([flowex, "check-config", file.name], capture_output=True, text=True)
    finally:
        os.unlink(file.name)
    listed = out.stderr.split("expected one of", 1)[-1].split(" at line")[0]
    return set(listed.replace("`", "").replace(",", " ").split())


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
    # tls and aggregator have no default to print: the agent names its keys when refusing one.
    agent_collector = agent_fields(flowex, "export:\n  collectors:\n    - {name: a, address: 'b:1', unknown: 1}\n")
    check("the schema's collector keys are exactly the agent's", collector_keys == agent_collector,
          f"schema {sorted(collector_keys)}, agent {sorted(agent_collector)}")
    tls_keys = set(schema["properties"]["collectors"]["items"]["properties"]["tls"]["properties"])
    agent_tls = agent_fields(
        flowex, "export:\n  collectors:\n    - {name: a, address: 'b:1', transport: tls, tls: {unknown: 1}}\n")
    check("the schema's tls keys are exactly the agent's", tls_keys == agent_tls,
          f"schema {sorted(tls_keys)}, agent {sorted(agent_tls)}")
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

        # certificateMounts: one read-only volume cert-NAME each, of its ConfigMap or Secret.
        certificate_mounts = values.get("certificateMounts", chart_values["certificateMounts"])
        expected_volumes = {
            f"cert-{m['name']}": {"name": f"cert-{m['name']}", "configMap": {"name": m["configMap"]}}
            if "configMap" in m else {"name": f"cert-{m['name']}", "secret": {"secretName": m["secret"]}}
            for m in certificate_mounts
        }
        expected_mounts = {f"cert-{m['name']}": {"name": f"cert-{m['name']}", "mountPath": m["mountPath"],
                                                  "readOnly": True} for m in certificate_mounts}
        cert_volumes = {name: v for name, v in volumes.items() if name.startswith("cert-")}
        cert_mounts = {name: m for name, m in mounts.items() if name.startswith("cert-")}
        check(f"{variant}: " + (f"certificateMounts {', '.join(sorted(expected_mounts))} as read-only volumes"
                                if expected_mounts else "no certificateMounts, no cert- volumes"),
              cert_volumes == expected_volumes and cert_mounts == expected_mounts,
              f"volumes {cert_volumes}, mounts {cert_mounts}")

        # tls.antrea: a Role per namespace of the CA ConfigMaps and client Secrets, with
        # exactly those objects, bound to the agent's ServiceAccount; nothing otherwise.
        roles = sorted(((d["metadata"]["namespace"], d["metadata"]["name"], d["rules"])
                        for d in documents if d["kind"] == "Role"), key=str)
        bindings = sorted(((d["metadata"]["namespace"], d["metadata"]["name"], d["roleRef"], d["subjects"])
                           for d in documents if d["kind"] == "RoleBinding"), key=str)
        expected_roles = ROLES.get(variant, {})
        where = ", ".join(sorted(expected_roles))
        check(f"{variant}: " + (f"tls.antrea Roles in {where}" if where else "no Role"),
              roles == sorted(((ns, ROLE_NAME, rules) for ns, rules in expected_roles.items()), key=str),
              str(roles))
        check(f"{variant}: " + (f"tls.antrea RoleBindings in {where} to ServiceAccount flowex-system/flowex"
                                if where else "no RoleBinding"),
              bindings == sorted(((ns, ROLE_NAME, {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                   "name": ROLE_NAME}, [SERVICE_ACCOUNT])
                                  for ns in expected_roles), key=str),
              str(bindings))
        # The token is there when the agent may use it: RBAC from the chart, or tls.antrea.
        collectors = values.get("collectors", chart_values["collectors"])
        antrea = any(c.get("tls", {}).get("antrea") for c in collectors)
        automount = values.get("rbac", {}).get("create", True) or antrea
        service_account = next(d for d in documents if d["kind"] == "ServiceAccount")
        check(f"{variant}: service account token mounted: {automount}",
              daemonset["spec"]["template"]["spec"]["automountServiceAccountToken"] is automount
              and service_account["automountServiceAccountToken"] is automount)

        # NOTES name each collector as TRANSPORT://ADDRESS, and where tls.antrea reads from.
        notes = manifests["flowex/templates/NOTES.txt"]
        expected_lines = []
        for c in collectors:
            expected_lines.append(f"  - {c['name']}: {c.get('transport', 'udp')}://{c['address']}"
                                  + (f" (aggregator: {c['aggregator']})" if "aggregator" in c else ""))
            tls = c.get("tls", {})
            if tls.get("antrea"):
                expected_lines.append(
                    "    certificates from the API: ca.crt of ConfigMap "
                    f"{tls.get('caConfigMap', 'flow-aggregator/flow-aggregator-ca')}, tls.crt and tls.key of "
                    f"Secret {tls.get('clientSecret', 'flow-aggregator/flow-aggregator-client-tls')}")
        missing = [line for line in expected_lines if line not in notes.splitlines()]
        check(f"{variant}: NOTES list the collectors", not missing, f"{missing} not in:\n{notes}")
        # The node's network findings are reachable from what the chart deploys.
        check(
            f"{variant}: NOTES point at /diagnose and flowex diagnose",
            "/diagnose" in notes and "flowex diagnose" in notes,
            notes,
        )

    for values, path, *words in BAD_VALUES:
        try:
            chart.validate_schema(values)
            check(f"schema refuses {values}", False, "accepted")
        except helm.HelmError as error:
            check(f"schema refuses {values}", f"at '{path}':" in str(error)
                  and all(w in str(error) for w in words), str(error))

    passed = sum(results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
