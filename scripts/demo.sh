#!/usr/bin/env bash
# The main job, end to end on loopback: start collector-sim, export Antrea flow records to
# it over UDP (IPv4) and TCP (IPv6), show a few decoded records and the final counters.
# Until the flowex agent exists, the exporter is ipfix-send (the same encoder the agent
# will use).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p collector-sim --bins >/dev/null
bin=target/release
port=${PORT:-4739}
out=$(mktemp -d)
trap 'kill "$collector" 2>/dev/null || true; rm -rf "$out"' EXIT

"$bin/collector-sim" --listen "udp://127.0.0.1:$port" --listen "tcp://[::1]:$port" \
  --json --expect-records 1500 --duration 30 >"$out/records.jsonl" 2>"$out/collector.log" &
collector=$!
sleep 0.5

echo "== exporting 1000 IPv4 records over UDP and 500 IPv6 records over TCP"
"$bin/ipfix-send" --to "udp://127.0.0.1:$port" --count 1000
"$bin/ipfix-send" --to "tcp://[::1]:$port" --count 500 --ipv6 --domain 2
wait "$collector"

echo "== three records as collector-sim decoded them"
head -n 3 "$out/records.jsonl"
echo "== collector-sim's final counters"
tail -n 1 "$out/records.jsonl"
