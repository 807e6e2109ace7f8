#!/usr/bin/env bash
# The one test command.
#
#   integration/run.sh                          # fmt, clippy, build, all tests
#   integration/run.sh -- --include-ignored     # also the scenarios that need the proxy
#   integration/run.sh --test integration core  # extra arguments go to `cargo test`
#
# 1. As root, installs the real clients and registries the tests drive (Debian packages),
#    and the Python packages helm/test needs (PyPI, in a venv under the target directory).
# 2. Checks formatting and lints, builds tests and binaries and the static release binary
#    the image test packages (online: may fetch crates), checks the Helm chart, and runs
#    each fuzz target in fuzz/ for a few seconds (cargo-fuzz is installed if missing).
# 3. Runs `cargo test --offline` inside a fresh network namespace with only loopback up,
#    in a private mount namespace, so no test can reach anything but 127.0.0.0/8.
# 0. `cargo deny check` (deny.toml): licenses, bans and sources always (offline), then the
#    RustSec advisories, which need the advisory DB from github.com: it runs first, outside
#    any network namespace. A finding fails the run; a DB that cannot be fetched after three
#    tries is reported as a warning (a DNS outage must not block every change), never passed
#    over silently.
# Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: must run as root (dockerd, mount and network namespaces need it)" >&2
    exit 1
fi

# --- 0. dependencies: advisories, licenses, sources --------------------------------------
# Pinned: a newer cargo-deny may add checks that fail a run in which nothing else changed.
deny_version=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]; then
    cargo install cargo-deny --locked --version "$deny_version"
fi
cargo deny --offline check bans licenses sources
advisories=unfetched
for try in 1 2 3; do
    if cargo deny fetch db; then
        advisories=fetched
        break
    fi
    sleep $((try * 5))
done
if [ "$advisories" = fetched ]; then
    cargo deny --offline check advisories
else
    echo "run.sh: WARNING: the RustSec advisory DB could not be fetched; advisories NOT checked" >&2
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
    [prometheus]=prometheus
    [promtool]=prometheus
    [update-ca-certificates]=ca-certificates
    [python3]=python3
    [gpg]=gnupg
    [gpgconf]=gnupg
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

# Helm's engine (helm-python-sdk) and the Kubernetes schemas for helm/test, in a venv.
venv="${CARGO_TARGET_DIR:-target}/helm-test-venv"
if ! cmp -s helm/test/requirements.txt "$venv/requirements.txt"; then
    if ! python3 -m venv --clear "$venv"; then
        apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv
        python3 -m venv --clear "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check -r helm/test/requirements.txt
    cp helm/test/requirements.txt "$venv/requirements.txt"
fi

# --- 2. static checks and build ---------------------------------------------------------
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --tests --bins
helm/image/build.sh --binary-only
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" helm/test/check_chart.py --self-test \
    --portcullis "${CARGO_TARGET_DIR:-target}/debug/portcullis"

# Every fuzz target for a few seconds from the committed seeds (fuzz/README.md has the long
# campaigns). `-s none`: no sanitizer, so the stable toolchain builds it. Any crash, panic or
# hang (-timeout) fails the run; what grew lands in the ignored fuzz/corpus/.
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
(
    cd fuzz
    cargo fmt --check
    cargo fuzz build -s none --target-dir target
    for t in $(cargo fuzz list); do
        mkdir -p "corpus/$t"
        log="target/$t.log"
        if ! cargo fuzz run -s none --target-dir target "$t" "corpus/$t" "seeds/$t" -- \
            -max_total_time=6 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "run.sh: fuzz target $t failed; the input is under fuzz/artifacts/$t/" >&2
            exit 1
        fi
        sed -n "s/^stat::number_of_executed_units: */fuzz $t: executions /p" "$log"
    done
)

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
