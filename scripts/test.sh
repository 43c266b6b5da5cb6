#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine, as root:
# installs what the tests need, then runs fmt, clippy (-D warnings), every test, and the
# offline checks of the Helm chart.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root: the tests capture on loopback and use the kernel" >&2
  exit 1
fi

# Debian packages the tests use, installed only when missing.
packages=(tshark conntrack nftables iproute2 procps ethtool clang-19 libbpf-dev openssl protobuf-compiler nfdump pmacct)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Python packages for the offline Helm chart checks (Helm's SDK, Kubernetes schemas) and
# for the independent gRPC server of the gRPC tests (grpcio, grpcio-tools) and the
# independent IPFIX decoder of the TLS tests (python-ipfix, package ipfix).
if ! python3 -c "import helm_python, kubernetes_validate, yaml, grpc, grpc_tools, ipfix.reader" 2>/dev/null; then
  echo "== installing helm-python-sdk kubernetes-validate pyyaml grpcio grpcio-tools ipfix"
  python3 -m pip install -q --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml grpcio grpcio-tools ipfix
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== Helm chart: lint, render, Kubernetes schemas, flowex check-config"
# target/debug/flowex is the binary `cargo test` built for the agent's integration tests.
python3 scripts/check_chart.py target/debug/flowex
echo "== Container image: buildah build of Containerfile, flowex run inside with podman"
bash scripts/check_image.sh
