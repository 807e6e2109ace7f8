#!/usr/bin/env bash
# The one test command.
#
#   integration/run.sh                          # fmt, clippy, build, all tests
#   integration/run.sh -- --include-ignored     # also the scenarios that need the proxy
#   integration/run.sh --test integration core  # extra arguments go to `cargo test`
#
# 1. As root, installs the real clients and registries the tests drive (Debian packages).
# 2. Checks formatting and lints, builds tests and binaries (online: may fetch crates).
# 3. Runs `cargo test --offline` inside a fresh network namespace with only loopback up,
#    in a private mount namespace, so no test can reach anything but 127.0.0.0/8.
# Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: must run as root (dockerd, mount and network namespaces need it)" >&2
    exit 1
fi

# --- 1. tools ------------------------------------------------------------------------
# command -> Debian package providing it
declare -A needs=(
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [dockerd]=docker.io
    [docker]=docker.io
    [podman]=podman
    [buildah]=buildah
    [htpasswd]=apache2-utils
    [ip]=iproute2
    [unshare]=util-linux
    [nsenter]=util-linux
    [curl]=curl
)
missing=()
for cmd in "${!needs[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "run.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2046
    apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
fi

# --- 2. static checks and build ---------------------------------------------------------
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --tests --bins

# --- 3. tests, loopback only ----------------------------------------------------------
# Only this run's processes live in the new network namespace. Tests stop what they start
# when they drop it; if the test binary itself died, whatever is left in the namespace
# is stopped here, by PID.
inner='
ip link set lo up
cargo test --offline "$@"
rc=$?
ns=$(readlink /proc/$$/ns/net)
leftovers() {
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        if [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ]; then continue; fi
        [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$ns" ] && echo "$pid"
    done
}
left=$(leftovers)
if [ -n "$left" ]; then
    echo "run.sh: stopping processes the tests left behind: $left" >&2
    kill -TERM $left 2>/dev/null; sleep 5
    left=$(leftovers); [ -n "$left" ] && kill -KILL $left 2>/dev/null
fi
exit $rc
'
exec unshare --net --mount --propagation private -- bash -c "$inner" run.sh "$@"
