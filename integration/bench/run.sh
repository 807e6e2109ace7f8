#!/usr/bin/env bash
# End-to-end benchmark: the registry directly, nginx in front of it, portcullis in front of it.
#
#   integration/bench/run.sh [--quick | --paced | --serve]
#
# Installs what is missing (apt-get, as root), builds portcullis in release mode, makes a
# test CA and certificates, starts on 127.0.0.1, with TLS on every hop:
#   direct      CNCF distribution (docker-registry) over TLS
#   nginx       nginx as a TLS reverse proxy in front of it (integration/bench/nginx.conf)
#   relay       nginx's stream module as a bare TLS relay in front of it, for blob downloads
#               only: the floor for any proxy that terminates TLS (integration/bench/relay.conf)
#   portcullis  portcullis in front of it, registry endpoint mode (host bench.local)
# seeds the registry once, then measures every figure in rounds, each path back to back
# (direct nginx portcullis direct nginx portcullis ...), so drift hits all alike. Manifest
# latency is measured twice: closed loop (as fast as answers come: every core busy) and
# paced at a fixed rate well below saturation (what the proxy adds to one request).
# Prints one table with ratios and the targets of issue 7, and writes the same as JSON to
# integration/bench/results/<date>.json. --quick: 1 round, smaller blobs, shorter runs.
# --paced: only the paced manifest runs (what a proxy or a cached signature verdict adds to
# one request), 7 rounds of 10 s each per path, on a machine left otherwise idle.
# --serve: start and seed everything, print the URLs, and wait (for perf and friends).
# Every process it starts is stopped by PID on exit, and its temp dir removed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

quick=0 serve=0 paced=0
case "${1:-}" in
    --quick) quick=1 ;;
    --paced) paced=1 ;;
    --serve) serve=1 quick=1 ;;
    "") ;;
    *) echo "usage: $0 [--quick | --paced | --serve]" >&2; exit 2 ;;
esac
if [ "$quick" = 1 ]; then
    rounds=1 blob_mib=32 upload_mib=32 load_secs=3
elif [ "$paced" = 1 ]; then
    rounds=7 blob_mib=32 upload_mib=32 load_secs=10
else
    rounds=3 blob_mib=256 upload_mib=256 load_secs=10
fi
chunk_bytes=$((16 * 1024 * 1024))
accept="application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
accept+=", application/vnd.docker.distribution.manifest.v2+json"
accept+=", application/vnd.docker.distribution.manifest.list.v2+json"
paths=(direct nginx portcullis)
blob_paths=(direct nginx relay portcullis)
paced_rate=400 # req/s over 32 connections; direct serves about 1,700 at saturation
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
py() { python3 -B "$here/bench.py" "$@"; }

# --- tools ------------------------------------------------------------------------------

install_missing() {
    local missing=() pair
    for pair in docker-registry:docker-registry nginx:nginx openssl:openssl curl:curl \
        python3:python3 gpg:gnupg skopeo:skopeo; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    [ -f "$stream_module" ] || missing+=(libnginx-mod-stream)
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root to install them"
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() {
    log "building portcullis and the load generator (release)"
    local target=${CARGO_TARGET_DIR:-target}
    case "$target" in /*) ;; *) target="$repo/$target" ;; esac
    (cd "$repo" && cargo build --release --locked --bin portcullis)
    CARGO_TARGET_DIR=$target cargo build --release --locked \
        --manifest-path "$here/loadgen/Cargo.toml"
    portcullis_bin="$target/release/portcullis"
    loadgen_bin="$target/release/portcullis-loadgen"
    [ -x "$portcullis_bin" ] && [ -x "$loadgen_bin" ] || die "no binaries in $target/release"
}

# --- processes --------------------------------------------------------------------------

work=""
cleanup() {
    local status=$? pid pids
    # Only what this script started: the three servers (our jobs) and any download client.
    pids="$(jobs -p) $(cat "$work/clients.pids" 2>/dev/null || true)"
    [ -n "${GNUPGHOME:-}" ] && gpgconf --kill all 2>/dev/null
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $pids; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" != 0 ] && [ -n "$work" ]; then
        for f in "$work"/*.log; do
            [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 5 "$f" >&2; }
        done
    fi
    [ -n "$work" ] && rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

make_certs() {
    local d=$work/certs
    mkdir -p "$d"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$d/ca.key" -sha256 -days 2 -subj "/CN=portcullis bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$d/ca.crt"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/server.key" 2>/dev/null
    openssl req -new -key "$d/server.key" -subj "/CN=127.0.0.1" -out "$d/server.csr"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -sha256 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
}

fill() { # template, output: replace @PLACEHOLDERS@
    sed -e "s|@DIR@|$2|g" -e "s|@REGISTRY_PORT@|$registry_port|g" \
        -e "s|@NGINX_PORT@|$nginx_port|g" -e "s|@CERT@|$work/certs/server.crt|g" \
        -e "s|@RELAY_PORT@|$relay_port|g" -e "s|@STREAM_MODULE@|$stream_module|g" \
        -e "s|@KEY@|$work/certs/server.key|g" -e "s|@CA@|$work/certs/ca.crt|g" "$1"
}

wait_ready() { # name pid url cafile
    for _ in $(seq 200); do
        kill -0 "$2" 2>/dev/null || { tail -20 "$work/$1.log" >&2; die "$1 exited"; }
        if [ -f "$4" ] && curl -sf -o /dev/null --cacert "$4" "$3"; then return; fi
        sleep 0.1
    done
    tail -20 "$work/$1.log" >&2
    die "$1 did not answer $3"
}

# An nginx with one of the configurations here; sets started_pid (its master process). Not
# called in $(...): the server must stay a job of this shell, which cleanup stops.
start_nginx() { # name template port
    mkdir -p "$work/$1"
    fill "$here/$2" "$work/$1" >"$work/$1/nginx.conf"
    nginx -t -q -p "$work/$1" -c "$work/$1/nginx.conf"
    nginx -p "$work/$1" -c "$work/$1/nginx.conf" >"$work/$1.log" 2>&1 &
    started_pid=$!
    wait_ready "$1" "$started_pid" "https://127.0.0.1:$3/v2/" "$work/certs/ca.crt"
}

start_servers() {
    local ports
    ports=$(py ports 6)
    # portcullis's admin and proxy listeners too: their defaults (9464, 3128) would collide
    # with a portcullis already running here, or a second bench (integration/bench/ab.sh).
    read -r registry_port nginx_port portcullis_port relay_port admin_port proxy_port <<<"$ports"

    mkdir -p "$work/registry"
    fill "$here/registry.yml" "$work/registry" >"$work/registry/config.yml"
    docker-registry serve "$work/registry/config.yml" >"$work/registry.log" 2>&1 &
    registry_pid=$!
    wait_ready registry "$registry_pid" "https://127.0.0.1:$registry_port/v2/" "$work/certs/ca.crt"

    start_nginx nginx nginx.conf "$nginx_port"
    nginx_pid=$started_pid
    start_nginx relay relay.conf "$relay_port"
    relay_pid=$started_pid

    mkdir -p "$work/portcullis"
    # A realistic policy: a few hundred rules (repository prefixes, regexes, tags, digests)
    # that the benchmark's content does not match, so every request pays for a full decision.
    {
        echo 'public_registries = ["docker.io", "quay.io", "ghcr.io"]'
        for i in $(seq 1 100); do
            printf '[[rule]]\nid = "prefix-%d"\nmessage = "blocked"\naction = "deny"\nrepository = "blocked%d/"\n' "$i" "$i"
            printf '[[rule]]\nid = "regex-%d"\nmessage = "internal"\naction = "deny"\nrepository = "regex:^team%d/.*-internal$"\n' "$i" "$i"
        done
        for i in $(seq 1 50); do
            printf '[[rule]]\nid = "tag-%d"\nmessage = "bad tag"\naction = "deny"\nregistry = "bench.local"\ntag = "^bad-%d$"\n' "$i" "$i"
            printf '[[rule]]\nid = "digest-%d"\nmessage = "known bad"\naction = "deny"\ndigest = "sha256:%064x"\n' "$i" "$i"
        done
    } >"$work/portcullis/policy.toml"
    cat >"$work/portcullis/config.toml" <<EOF
state_dir = "$work/portcullis/state"

[listen]
registry = "127.0.0.1:$portcullis_port"
admin = "127.0.0.1:$admin_port"
proxy = "127.0.0.1:$proxy_port"

[resolve]
search = ["bench.local"]
push = "bench.local"

[cache]
manifest_bytes = 67108864

[policy]
paths = ["$work/portcullis/policy.toml"]

[[registry]]
host = "bench.local"
endpoint = "https://127.0.0.1:$registry_port"
ca_file = "$work/certs/ca.crt"
EOF
    "$portcullis_bin" config check "$work/portcullis/config.toml" >/dev/null
    # Logging stays at its default (info: one line per request), as deployed.
    "$portcullis_bin" serve --config "$work/portcullis/config.toml" >"$work/portcullis.log" 2>&1 &
    portcullis_pid=$!
    wait_ready portcullis "$portcullis_pid" "https://127.0.0.1:$portcullis_port/v2/" \
        "$work/portcullis/state/ca.crt"

    declare -gA base cafile
    base=([direct]="https://127.0.0.1:$registry_port/v2"
        [nginx]="https://127.0.0.1:$nginx_port/v2"
        [relay]="https://127.0.0.1:$relay_port/v2"
        [portcullis]="https://127.0.0.1:$portcullis_port/v2/bench.local")
    cafile=([direct]="$work/certs/ca.crt" [nginx]="$work/certs/ca.crt" [relay]="$work/certs/ca.crt"
        [portcullis]="$work/portcullis/state/ca.crt")
    log "registry :$registry_port (pid $registry_pid), nginx :$nginx_port (pid $nginx_pid)," \
        "relay :$relay_port (pid $relay_pid), portcullis :$portcullis_port (pid $portcullis_pid)"
}

# A second portcullis, the same but for a containers-policy.json that requires the manifest's
# GPG signature (made by skopeo, read from a file:// lookaside store): what verifying costs a
# pull by tag once its decision is cached. Measured in the paced runs only.
start_signed() {
    local d=$work/signed port fpr hex
    mkdir -p "$d/gnupg" "$d/policies" && chmod 700 "$d/gnupg"
    export GNUPGHOME=$d/gnupg
    gpg --batch --pinentry-mode loopback --passphrase '' \
        --quick-gen-key 'portcullis bench <bench@example.invalid>' rsa2048 sign never 2>/dev/null
    fpr=$(gpg --batch --with-colons --list-keys bench@example.invalid | awk -F: '/^fpr/ {print $10; exit}')
    gpg --batch --export "$fpr" >"$d/key.gpg"
    hex=${manifest_digest#sha256:}
    mkdir -p "$d/lookaside/bench/app@sha256=$hex"
    skopeo standalone-sign "$work/manifest.json" bench.local/bench/app:v1 "$fpr" \
        -o "$d/lookaside/bench/app@sha256=$hex/signature-1" || die "signing failed"
    printf '{"default":[{"type":"reject"}],"transports":{"docker":{"bench.local":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"%s"}]}}}\n' \
        "$d/key.gpg" >"$d/policies/policy.json"
    printf 'docker:\n  bench.local:\n    lookaside: file://%s/lookaside\n' "$d" >"$d/policies/sigs.yaml"
    cp "$work/portcullis/policy.toml" "$d/policies/"
    read -r port admin proxy <<<"$(py ports 3)"
    sed -e "s|127.0.0.1:$portcullis_port|127.0.0.1:$port|" -e "s|127.0.0.1:$admin_port|127.0.0.1:$admin|" \
        -e "s|127.0.0.1:$proxy_port|127.0.0.1:$proxy|" -e "s|$work/portcullis/state|$d/state|" \
        -e "s|paths = .*|paths = [\"$d/policies\"]|" "$work/portcullis/config.toml" >"$d/config.toml"
    "$portcullis_bin" config check "$d/config.toml" >/dev/null
    "$portcullis_bin" serve --config "$d/config.toml" >"$work/signed.log" 2>&1 &
    signed_pid=$!
    wait_ready signed "$signed_pid" "https://127.0.0.1:$port/v2/" "$d/state/ca.crt"
    base[signed]="https://127.0.0.1:$port/v2/bench.local"
    cafile[signed]="$d/state/ca.crt"
    curl -sS --http1.1 --fail --cacert "${cafile[signed]}" -H "Accept: $accept" -o "$work/got.json" \
        "${base[signed]}/bench/app/manifests/v1" || die "signed: the signed manifest is refused"
    # ... because its signature was checked, not for want of a policy.
    curl -s "http://127.0.0.1:$admin/metrics" | grep -q 'rule="signature:bench.local"' ||
        die "signed: no signature decision was counted"
    log "signed portcullis :$port (pid $signed_pid)"
}

# Processes whose memory and CPU are reported: nginx's workers, portcullis itself.
proxy_pids() {
    case "$1" in
        nginx) ps --ppid "$nginx_pid" -o pid= ;;
        relay) ps --ppid "$relay_pid" -o pid= ;;
        portcullis) echo "$portcullis_pid" ;;
        signed) echo "$signed_pid" ;;
    esac
}
reset_peak_rss() { # path: VmHWM restarts from the current RSS (clear_refs 5)
    local pid
    for pid in $(proxy_pids "$1"); do echo 5 >"/proc/$pid/clear_refs"; done
}
peak_rss_mib() { # path: sum of VmHWM over its processes, MiB
    local pid kb=0 v
    for pid in $(proxy_pids "$1"); do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
        kb=$((kb + v))
    done
    awk -v kb="$kb" 'BEGIN {printf "%.1f", kb / 1024}'
}

# CPU time (user + system, clock ticks) of the registry and of the path's proxy, so that
# a throughput figure comes with what it cost: "registry_ticks proxy_ticks".
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_now() { # path
    local pid proxy=0
    for pid in $(proxy_pids "$1"); do proxy=$((proxy + $(ticks "$pid"))); done
    echo "$(ticks "$registry_pid") $proxy"
}
# Records <metric>_cpu_registry and <metric>_cpu_proxy, per GB moved (CPU s/GB) or per
# request answered (CPU us/request).
record_cpu() { # metric path round before(cpu_now) bytes|requests amount
    local r0 p0 r1 p1 scale
    read -r r0 p0 <<<"$4"
    read -r r1 p1 <<<"$(cpu_now "$2")"
    case "$5" in
        bytes) scale=1e9 ;;    # s per GB
        requests) scale=1e6 ;; # us per request
    esac
    record "${1}_cpu_registry" "$2" "$3" "$(per_unit "$(seconds $((r1 - r0)))" "$6" "$scale")"
    [ "$2" = direct ] ||
        record "${1}_cpu_proxy" "$2" "$3" "$(per_unit "$(seconds $((p1 - p0)))" "$6" "$scale")"
}
seconds() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz}'; }
per_unit() { # cpu_seconds amount scale: CPU seconds per (amount / scale)
    awk -v c="$1" -v n="$2" -v u="$3" 'BEGIN {printf "%.3f", c / (n / u)}'
}

# --- content ----------------------------------------------------------------------------

seed() {
    log "seeding: ${blob_mib} MiB blob, ${upload_mib} MiB upload blob, small blobs, manifest"
    head -c "$((blob_mib * 1024 * 1024))" /dev/urandom >"$work/blob.bin"
    head -c "$((upload_mib * 1024 * 1024))" /dev/urandom >"$work/upload.bin"
    local digests
    digests=$(py seed "${base[direct]}" "${cafile[direct]}" "$work" "$work/blob.bin" \
        "$work/upload.bin")
    read -r manifest_digest blob_digest upload_digest <<<"$digests"
    blob_bytes=$((blob_mib * 1024 * 1024))
}

# The same answers through all three paths, before anything is timed.
check_path() {
    local p=$1 b=${base[$1]} ca=${cafile[$1]} got
    curl -sS --http1.1 --fail --cacert "$ca" -H "Accept: $accept" -o "$work/got.json" \
        "$b/bench/app/manifests/v1"
    cmp -s "$work/got.json" "$work/manifest.json" || die "$p: manifest by tag differs"
    curl -sS --http1.1 --fail --cacert "$ca" -H "Accept: $accept" -o "$work/got.json" \
        "$b/bench/app/manifests/$manifest_digest"
    cmp -s "$work/got.json" "$work/manifest.json" || die "$p: manifest by digest differs"
    got=$(curl -sS --http1.1 --fail --cacert "$ca" -H "Accept: $accept" -I \
        "$b/bench/app/manifests/v1" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
    [ "$got" = "$manifest_digest" ] || die "$p: HEAD by tag gave digest '$got'"
    check_blob "$p"
    [ "$(curl -s --http1.1 -o /dev/null -w '%{http_code}' --cacert "$ca" -H "Accept: $accept" \
        "$b/bench/app/manifests/missing")" = 404 ] || die "$p: a missing tag did not answer 404"
}

check_blob() { # path
    local got
    got="sha256:$(curl -sS --http1.1 --fail --cacert "${cafile[$1]}" \
        "${base[$1]}/bench/app/blobs/$blob_digest" | sha256sum | cut -d' ' -f1)"
    [ "$got" = "$blob_digest" ] || die "$1: blob arrived as $got"
}

# --- measurements -----------------------------------------------------------------------

record() { # metric path round value
    printf '{"metric": "%s", "path": "%s", "round": %d, "value": %s}\n' "$1" "$2" "$3" "$4" \
        >>"$work/samples.jsonl"
    log "round $3  $2  $1 = $4"
}

now() { date +%s.%N; }

# n parallel downloads of the big blob; prints the aggregate MB/s (bytes / wall time) and
# the CPU seconds the clients (curl) used.
download() { # path n
    local p=$1 n=$2 i start end pids=()
    local url="${base[$p]}/bench/app/blobs/$blob_digest"
    start=$(now)
    for i in $(seq "$n"); do
        curl -s --http1.1 -o /dev/null -w '%{http_code} %{size_download} %{speed_download}\n' \
            --cacert "${cafile[$p]}" "$url" >"$work/dl.$i" &
        pids+=($!)
        echo $! >>"$work/clients.pids"
    done
    for i in "${pids[@]}"; do wait "$i" || die "$p: a download exited with status $?"; done
    end=$(now)
    : >"$work/clients.pids"
    for i in $(seq "$n"); do
        read -r code size _ <"$work/dl.$i" || die "$p: download $i wrote nothing"
        [ "$code" = 200 ] && [ "$size" = "$blob_bytes" ] ||
            die "$p: download $i of $n got HTTP $code, $size of $blob_bytes bytes"
    done
    if [ "$n" = 1 ]; then
        awk '{printf "%.1f", $3 / 1e6}' "$work/dl.1" # curl's own figure
    else
        awk -v b="$blob_bytes" -v n="$n" -v s="$start" -v e="$end" \
            'BEGIN {printf "%.1f", n * b / (e - s) / 1e6}'
    fi
    # `times`, second line: user and system time of this subshell's children (the curls).
    # (Into a file: in a pipeline it would run in a fork of its own, without children.)
    times >"$work/times"
    awk 'NR == 2 {gsub(/[ms]/, " "); printf " %.2f", $1 * 60 + $2 + $3 * 60 + $4}' "$work/times"
}

upload() { # path mode
    py upload "${base[$1]}" "${cafile[$1]}" bench/upload "$work/upload.bin" "$upload_digest" \
        "$2" "$chunk_bytes"
}

# One run of the load generator (integration/bench/loadgen); sets rps, p50, p99 (ms) and
# answered (warm-up included). It fails on any error or non-2xx answer.
manifest_load() { # path kind conns [rate]
    local p=$1 kind=$2 conns=$3 method=GET ref=v1 figures pace=()
    [ -n "${4:-}" ] && pace=(--rate "$4")
    case "$kind" in
        get_digest) ref=$manifest_digest ;;
        head_tag) method=HEAD ;;
    esac
    "$loadgen_bin" "${base[$p]}/bench/app/manifests/$ref" --cacert "${cafile[$p]}" \
        --connections "$conns" --threads 2 --duration "$load_secs" --warmup 1 \
        --method "$method" --header "Accept: $accept" "${pace[@]}" >"$work/load.json" ||
        die "$p: $kind at $conns connections failed: $(cat "$work/load.json")"
    figures=$(py load "$work/load.json")
    read -r rps p50 p99 answered <<<"$figures"
}

# Each figure for direct, nginx, portcullis back to back, then the next figure.
# ("v=$(...)" before "record": a failed measurement then stops the run.)
round() {
    local r=$1 p kind c n v cpu client
    declare -A rss256=()
    if [ "$paced" = 1 ]; then
        paced_round "$r"
        return
    fi
    for n in 1 8 64; do
        for p in "${blob_paths[@]}"; do
            [ "$p" = direct ] || reset_peak_rss "$p"
            cpu=$(cpu_now "$p")
            v=$(download "$p" "$n")
            read -r v client <<<"$v"
            record "blob_$n" "$p" "$r" "$v"
            record_cpu "blob_$n" "$p" "$r" "$cpu" bytes $((n * blob_bytes))
            record "blob_${n}_cpu_client" "$p" "$r" "$(per_unit "$client" $((n * blob_bytes)) 1e9)"
            if [ "$n" = 64 ] && [ "$p" != direct ] && [ "$p" != relay ]; then
                v=$(peak_rss_mib "$p")
                record rss_blob_64 "$p" "$r" "$v"
            fi
        done
    done
    for kind in mono chunked; do
        for p in "${paths[@]}"; do
            cpu=$(cpu_now "$p")
            v=$(upload "$p" "$kind")
            record "upload_$kind" "$p" "$r" "$v"
            record_cpu "upload_$kind" "$p" "$r" "$cpu" bytes $((upload_mib * 1024 * 1024))
        done
    done
    for kind in get_tag get_digest head_tag; do
        for c in 32 256; do
            for p in "${paths[@]}"; do
                [ "$p" = direct ] || reset_peak_rss "$p"
                cpu=$(cpu_now "$p")
                manifest_load "$p" "$kind" "$c"
                record "${kind}_c${c}_rps" "$p" "$r" "$rps"
                record "${kind}_c${c}_p50" "$p" "$r" "$p50"
                record "${kind}_c${c}_p99" "$p" "$r" "$p99"
                record_cpu "${kind}_c${c}" "$p" "$r" "$cpu" requests "$answered"
                if [ "$c" = 256 ] && [ "$p" != direct ]; then
                    v=$(peak_rss_mib "$p")
                    rss256[$p]=$(awk -v a="${rss256[$p]:-0}" -v b="$v" \
                        'BEGIN {print (b > a) ? b : a}')
                fi
            done
        done
    done
    paced_round "$r"
    for p in nginx portcullis; do record rss_c256 "$p" "$r" "${rss256[$p]}"; done
}

paced_round() {
    local r=$1 p kind
    for kind in get_tag head_tag; do
        for p in "${paths[@]}" signed; do
            manifest_load "$p" "$kind" 32 "$paced_rate"
            record "${kind}_paced_p50" "$p" "$r" "$p50"
            record "${kind}_paced_p99" "$p" "$r" "$p99"
        done
    done
}

meta() {
    local commit dirty=False
    commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
    [ -z "$(git -C "$repo" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] ||
        dirty=True
    python3 - <<EOF
import json, sys
print(json.dumps({
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "$commit", "src_dirty": $dirty,
    "quick": bool($quick), "paced_only": bool($paced), "rounds": $rounds, "blob_mib": $blob_mib,
    "upload_mib": $upload_mib, "upload_chunk_mib": $((chunk_bytes / 1024 / 1024)),
    "load_seconds": $load_secs, "load_warmup_seconds": 1, "load_threads": 2,
    "paced_rate": $paced_rate,
    "accept": "$accept",
    "machine": {"nproc": $(nproc), "cpu": "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)",
                "kernel": "$(uname -r)", "mem_mib": $(awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo)},
    "versions": {"registry": "$(docker-registry --version | awk '{print $NF}')",
                 "nginx": "$(nginx -v 2>&1 | sed 's|.*/||')",
                 "curl": "$(curl --version | awk 'NR == 1 {print $2}')",
                 "openssl": "$(openssl version | awk '{print $2}')",
                 "rustc": "$(rustc --version | awk '{print $2}')"},
    "loadavg_start": "$load_start", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "seconds": $SECONDS,
}))
EOF
}

main() {
    install_missing
    build
    work=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
    load_start=$(cut -d' ' -f1-3 /proc/loadavg)
    SECONDS=0
    make_certs
    start_servers
    seed
    for p in "${paths[@]}"; do check_path "$p"; done
    check_blob relay
    start_signed
    if [ "$serve" = 1 ]; then
        for p in "${paths[@]}"; do
            log "$p: ${base[$p]}/bench/app/manifests/v1 (--cacert ${cafile[$p]})"
        done
        log "manifest $manifest_digest, blob $blob_digest; logs in $work; Ctrl-C stops"
        wait -n "$registry_pid" "$nginx_pid" "$relay_pid" "$portcullis_pid" || true
        die "a server exited"
    fi
    log "all three paths serve the same content; $rounds round(s), ${load_secs}s per load run"
    for r in $(seq "$rounds"); do round "$r"; done

    mkdir -p "$here/results"
    local out suffix=""
    if [ "$quick" = 1 ]; then suffix=-quick; fi
    if [ "$paced" = 1 ]; then suffix=-paced; fi
    out="$here/results/$(date -u +%Y-%m-%dT%H%M%SZ)$suffix.json"
    meta >"$work/meta.json"
    py report "$work/samples.jsonl" "$work/meta.json" "$out" || {
        cp "$work/samples.jsonl" "${out%.json}.samples.jsonl"
        die "no report; the samples are in ${out%.json}.samples.jsonl"
    }
    log "wrote $out (${SECONDS}s)"
}

main
