#!/usr/bin/env bash
# The main job, end to end, as root: two network namespaces joined by a veth pair (a client
# and a "node"), collector-sim and the flowex agent running in the node namespace, real
# HTTP and UDP traffic plus a connection denied by an nftables rule, then the decoded
# records and collector-sim's counters. There is no cluster here: a stand-in API server (a
# few lines of Python below, serving a static pod list and an idle watch) tells the agent
# that 10.233.0.1 is pod demo/client and 10.233.0.2 pod demo/web, so the records carry pod
# names. Everything is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/demo.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi
for tool in ip nft python3; do
  command -v "$tool" >/dev/null || { echo "scripts/demo.sh: $tool is missing (apt-get install iproute2 nftables python3)" >&2; exit 1; }
done

cargo build --release --locked -p flowex-agent -p collector-sim --bins >/dev/null
bin=$PWD/target/release
client=fxdemo-client-$$
node=fxdemo-node-$$
out=$(mktemp -d)
cleanup() {
  kill "${collector:-}" "${web:-}" "${api:-}" 2>/dev/null || true
  ip netns del "$client" 2>/dev/null || true
  ip netns del "$node" 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

ip netns add "$client"
ip netns add "$node"
ip -n "$client" link add vc type veth peer name vn netns "$node"
ip -n "$client" addr add 10.233.0.1/24 dev vc
ip -n "$node" addr add 10.233.0.2/24 dev vn
for ns in "$client" "$node"; do
  ip -n "$ns" link set lo up
done
ip -n "$client" link set vc up
ip -n "$node" link set vn up
ip netns exec "$node" sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1 net.netfilter.nf_conntrack_events=1
ip netns exec "$node" nft -f - <<'NFT'
table inet demo {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 2222 log group 5 prefix "flowex:demo/deny-ssh/ingress-0" drop
    ct state new,established,related accept
  }
}
NFT

echo "== collector-sim, a stand-in Kubernetes API server and flowex start in the node namespace"
ip netns exec "$node" python3 - >"$out/api.log" 2>&1 <<'PY' &
import http.server, json, time
PODS = [("client", "10.233.0.1", "other-node"), ("web", "10.233.0.2", "demo-node")]
def pod(name, ip, node):
    return {"metadata": {"name": name, "namespace": "demo", "uid": "uid-" + name,
                         "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        if "watch=" in self.path:  # no changes: hold the watch open
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            time.sleep(30)
            return
        kind = {"pods": "Pod", "services": "Service", "nodes": "Node"}[self.path.split("?")[0].split("/")[-1]]
        items = [pod(*p) for p in PODS] if kind == "Pod" else []
        body = json.dumps({"kind": kind + "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": "1"}, "items": items}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 6443), Api).serve_forever()
PY
api=$!
cat >"$out/kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "http://127.0.0.1:6443"}}]
users: [{name: demo, user: {}}]
contexts: [{name: demo, context: {cluster: demo, user: demo}}]
current-context: demo
EOF
cat >"$out/flowex.yaml" <<EOF
nodeName: demo-node
export: {podCIDRs: ["10.233.0.0/24"]}
kubernetes: {kubeconfig: $out/kubeconfig, podScope: cluster}
state: {directory: $out/state}
EOF
ip netns exec "$node" "$bin/collector-sim" --listen udp://127.0.0.1:4739 --json --duration 20 \
  >"$out/records.jsonl" 2>"$out/collector.log" &
collector=$!
ip netns exec "$node" python3 -m http.server 8080 --bind 10.233.0.2 >/dev/null 2>&1 &
web=$!
sleep 0.5
ip netns exec "$node" "$bin/flowex" run --config "$out/flowex.yaml" --collector udp://127.0.0.1:4739 \
  --duration 6 2>"$out/flowex.log" &
agent=$!
sleep 1

echo "== traffic: 3 HTTP requests, a UDP exchange, and a denied SSH attempt"
ip netns exec "$client" python3 - <<'PY'
import socket, urllib.request
for _ in range(3):
    urllib.request.urlopen("http://10.233.0.2:8080/", timeout=5).read()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"hello", ("10.233.0.2", 5353))
s = socket.socket()
s.settimeout(0.5)
try:
    s.connect(("10.233.0.2", 2222))
except OSError:
    pass
PY

wait "$agent"
sleep 1
kill -INT "$collector"
wait "$collector" || true
cat "$out/flowex.log"
echo "== records collector-sim decoded (5-tuple, reason, bytes, pods, flowType, owning processes, policy)"
python3 - "$out/records.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
summary = lines[-1]
records = [l for l in lines[:-1] if "optionsTemplateId" not in l]
statistics = [l for l in lines[:-1] if "optionsTemplateId" in l]
def owner(side):
    pid = r.get(side + "ProcessId", 0)
    return f'{r[side + "ProcessName"]}[{pid}]' if pid else "-"
for r in records:
    policy = r.get("ingressNetworkPolicyName") or ""
    print(f'{r["sourceIPv4Address"]}:{r["sourceTransportPort"]} -> {r["destinationIPv4Address"]}:{r["destinationTransportPort"]} '
          f'proto={r["protocolIdentifier"]} reason={r["flowEndReason"]} octets={r["octetDeltaCount"]}/{r["reverseOctetDeltaCount"]} '
          f'state={r["tcpState"]} pods={r["sourcePodName"] or "-"}->{r["destinationPodName"] or "-"} flowType={r["flowType"]} '
          f'owners={owner("source")}->{owner("destination")} {("denied by " + policy) if policy else ""}')
print("== statistics the agent sent at shutdown (options records)")
for r in statistics:
    if r["optionsTemplateId"] == 258:
        print(f'exporting process {r["exportingProcessId"]}: {r["exportedFlowRecordTotalCount"]} record(s) exported '
              f'in {r["exportedMessageTotalCount"]} message(s), {r["notSentFlowTotalCount"]} not sent')
    elif r["optionsTemplateId"] == 259:
        source = {1: "conntrack", 2: "NFLOG deny"}.get(r["meteringProcessId"], r["meteringProcessId"])
        print(f'metering process {source}: {r["observedFlowTotalCount"]} flow(s) observed, '
              f'{r["ignoredPacketTotalCount"]} loss(es)')
print("== collector-sim's counters")
print(json.dumps(summary))
PY
