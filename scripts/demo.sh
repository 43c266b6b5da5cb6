#!/usr/bin/env bash
# The main job, end to end, as root: two network namespaces joined by a veth pair (a client
# and a "node"), collector-sim and the flowex agent running in the node namespace, real
# HTTP and UDP traffic plus a connection denied by an nftables rule, then the decoded
# records and collector-sim's counters. Everything is removed afterwards.
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
  kill "${collector:-}" "${web:-}" 2>/dev/null || true
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

echo "== collector-sim and flowex start in the node namespace"
ip netns exec "$node" "$bin/collector-sim" --listen udp://127.0.0.1:4739 --json --duration 20 \
  >"$out/records.jsonl" 2>"$out/collector.log" &
collector=$!
ip netns exec "$node" python3 -m http.server 8080 --bind 10.233.0.2 >/dev/null 2>&1 &
web=$!
sleep 0.5
ip netns exec "$node" "$bin/flowex" run --collector udp://127.0.0.1:4739 --duration 6 2>"$out/flowex.log" &
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
echo "== records collector-sim decoded (5-tuple, reason, bytes, owning processes, policy)"
python3 - "$out/records.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
records, summary = lines[:-1], lines[-1]
def owner(side):
    pid = r.get(side + "ProcessId", 0)
    return f'{r[side + "ProcessName"]}[{pid}]' if pid else "-"
for r in records:
    policy = r.get("ingressNetworkPolicyName") or ""
    print(f'{r["sourceIPv4Address"]}:{r["sourceTransportPort"]} -> {r["destinationIPv4Address"]}:{r["destinationTransportPort"]} '
          f'proto={r["protocolIdentifier"]} reason={r["flowEndReason"]} octets={r["octetDeltaCount"]}/{r["reverseOctetDeltaCount"]} '
          f'state={r["tcpState"]} owners={owner("source")}->{owner("destination")} {("denied by " + policy) if policy else ""}')
print("== collector-sim's counters")
print(json.dumps(summary))
PY
