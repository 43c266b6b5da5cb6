#!/usr/bin/env bash
# Builds the agent's container image from Containerfile with buildah and runs it with
# podman: `flowex --version`, `flowex check-config` on a good and a broken config, and
# `flowex print-default-config`. No registry is reached: the base image is a Debian bookworm
# made here with debootstrap (from Debian's package mirror) and imported, and the build
# stage uses this machine's Rust toolchain, mounted in. Needs root.
#
# Prints one line per check and ends with "N passed, M failed".
#
# This machine's container runtime has two quirks the commands below work around:
# crun refuses hybrid cgroup hierarchies (so podman runs with runc, and buildah builds with
# chroot isolation), and the sandbox cannot raise resource limits (so containers get
# limits below the current ones).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE="localhost/flowex-test-base:bookworm"
IMAGE="localhost/flowex:test"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

need=()
for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
    echo "== apt-get install ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi

if ! podman image exists "$BASE"; then
    echo "== debootstrap bookworm (minbase, gcc, libc6-dev) -> $BASE"
    rootfs="$(mktemp -d /var/tmp/flowex-base.XXXXXX)"
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        bookworm "$rootfs" "$MIRROR" >/dev/null
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi

echo "== buildah build -f Containerfile -> $IMAGE"
mkdir -p "$ROOT/target/image"
podman image rm -f "$IMAGE" >/dev/null 2>&1 || true
buildah build --isolation chroot --network host --layers=false \
    --build-arg RUST_IMAGE="$BASE" --build-arg BASE_IMAGE="$BASE" \
    -v "${CARGO_HOME:-$HOME/.cargo}:/root/.cargo" \
    -v "${RUSTUP_HOME:-$HOME/.rustup}:/root/.rustup" \
    -v "$ROOT/target/image:/src/target" \
    -t "$IMAGE" -f "$ROOT/Containerfile" "$ROOT" >"$ROOT/target/image-build.log" 2>&1 || {
    tail -30 "$ROOT/target/image-build.log"
    echo "0 passed, 1 failed"
    exit 1
}

in_image() {
    podman --runtime runc run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$@"
}

passed=0
failed=0
check() {
    local name="$1" ok="$2" detail="${3:-}"
    if [ "$ok" = 1 ]; then
        echo "ok   $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name: $detail"
        failed=$((failed + 1))
    fi
}

version="$(in_image "$IMAGE" --version 2>&1 || true)"
want="flowex $(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
check "flowex --version in the image prints \"$want\"" "$([ "$version" = "$want" ] && echo 1 || echo 0)" "$version"

entrypoint="$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMAGE")"
check "entrypoint flowex, command run" \
    "$([ "$entrypoint" = '["/usr/local/bin/flowex"] ["run"]' ] && echo 1 || echo 0)" "$entrypoint"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
in_image "$IMAGE" print-default-config >"$work/default.yaml"
check "print-default-config in the image" "$(grep -q '^kubernetes:' "$work/default.yaml" && echo 1 || echo 0)" \
    "$(head -5 "$work/default.yaml")"
# The configuration the chart renders by default (left by check_chart.py), else the
# agent's defaults.
config_source="the agent's default config"
if [ -f "$ROOT/target/chart-default-config.yaml" ]; then
    cp "$ROOT/target/chart-default-config.yaml" "$work/config.yaml"
    config_source="the chart's default ConfigMap"
else
    cp "$work/default.yaml" "$work/config.yaml"
fi
printf 'export:\n  activeTimeout: 0s\n' >"$work/broken.yaml"
out="$(in_image -v "$work/config.yaml:/etc/flowex/config.yaml:ro" "$IMAGE" check-config /etc/flowex/config.yaml 2>&1 || true)"
check "check-config accepts $config_source mounted at /etc/flowex/config.yaml" \
    "$([ "$out" = ok ] && echo 1 || echo 0)" "$out"
set +e
out="$(in_image -v "$work/broken.yaml:/etc/flowex/config.yaml:ro" "$IMAGE" check-config /etc/flowex/config.yaml 2>&1)"
status=$?
set -e
check "check-config refuses a broken config (exit 1, the key named)" \
    "$([ "$status" = 1 ] && [[ "$out" == *"export.activeTimeout: must be greater than 0"* ]] && echo 1 || echo 0)" \
    "exit $status: $out"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
