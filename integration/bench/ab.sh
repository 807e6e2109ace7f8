#!/usr/bin/env bash
# Upload throughput of two portcullis trees, side by side in one run:
#
#   integration/bench/ab.sh TREE_A TREE_B [ROUNDS] [MIB]
#
# TREE_A and TREE_B are checkouts of this repository (`git worktree add /tmp/a <rev>`); one
# of them older than ab.sh keeps portcullis's default admin and proxy ports, so not both.
# Each one's integration/bench/run.sh --serve starts its own registry and portcullis (each
# builds in its own tree); then the same MIB-MiB blob (default 256) is uploaded monolithically
# ROUNDS times (default 10) through each, alternating A, B, A, B, so drift hits both alike.
# Prints every sample, then the means, the proxy CPU per GB from /proc, and B over A.
#
# Why: run.sh --quick takes one 32 MiB upload sample per path, too few to compare two trees
# (one such comparison showed -15% that this script, at 10 x 256 MiB, showed was noise).
# Run it inside a network namespace as run.sh is:
#   unshare --net --mount --propagation private -- bash -c 'ip link set lo up; integration/bench/ab.sh /tmp/a /tmp/b'
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 TREE_A TREE_B [ROUNDS] [MIB]" >&2; exit 2; }
a=$(realpath "$1") b=$(realpath "$2") rounds=${3:-10} mib=${4:-256}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/portcullis-ab.XXXXXX)
pids=()
cleanup() {
    # run.sh stops what it started when it gets TERM.
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
py() { python3 -B "$here/bench.py" "$@"; }

serve() { # tree name
    (cd "$1" && exec integration/bench/run.sh --serve) >"$work/$2.log" 2>&1 &
    pids+=($!)
}
serve "$a" a
serve "$b" b
declare -A url ca pid
for t in a b; do
    for _ in $(seq 900); do
        grep -q "Ctrl-C stops" "$work/$t.log" && break
        grep -q "FAILED" "$work/$t.log" && { cat "$work/$t.log" >&2; exit 1; }
        sleep 1
    done
    line=$(grep "\] portcullis: https" "$work/$t.log") || { cat "$work/$t.log" >&2; exit 1; }
    url[$t]=$(sed -E 's|.*portcullis: (https://[^ ]*)/bench/app/.*|\1|' <<<"$line")
    ca[$t]=$(sed -E 's|.*--cacert ([^)]*)\).*|\1|' <<<"$line")
    pid[$t]=$(sed -nE 's|.*portcullis :[0-9]+ \(pid ([0-9]+)\).*|\1|p' "$work/$t.log" | head -1)
    [ -n "${pid[$t]}" ] || { echo "ab.sh: no portcullis pid in $work/$t.log" >&2; exit 1; }
done

head -c "$((mib * 1024 * 1024))" /dev/urandom >"$work/blob"
digest=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for t in a b; do # warm-up: the first upload of a blob is not measured
    py upload "${url[$t]}" "${ca[$t]}" bench/upload "$work/blob" "$digest" mono >/dev/null
done
declare -A sum cpu
for r in $(seq "$rounds"); do
    for t in a b; do
        t0=$(ticks "${pid[$t]}")
        v=$(py upload "${url[$t]}" "${ca[$t]}" bench/upload "$work/blob" "$digest" mono)
        t1=$(ticks "${pid[$t]}")
        echo "round $r $t: $v MB/s, proxy CPU $(((t1 - t0) * 1000 / hz)) ms"
        sum[$t]=$(awk -v s="${sum[$t]:-0}" -v v="$v" 'BEGIN{print s + v}')
        cpu[$t]=$((${cpu[$t]:-0} + t1 - t0))
    done
done
awk -v sa="${sum[a]}" -v sb="${sum[b]}" -v ca="${cpu[a]}" -v cb="${cpu[b]}" \
    -v n="$rounds" -v hz="$hz" -v gb="$(awk -v m="$mib" 'BEGIN{print m * 1048576 / 1e9}')" \
    -v ta="$a" -v tb="$b" -v mib="$mib" 'BEGIN {
    printf "A %s: %.1f MB/s, proxy CPU %.2f s/GB\n", ta, sa / n, ca / hz / n / gb
    printf "B %s: %.1f MB/s, proxy CPU %.2f s/GB\n", tb, sb / n, cb / hz / n / gb
    printf "B/A: throughput %.3f, proxy CPU %.3f (%d x %d MiB monolithic uploads each)\n",
        sb / sa, cb / ca, n, mib
}'
