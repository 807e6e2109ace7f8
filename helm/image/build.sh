#!/usr/bin/env bash
# Builds the portcullis container image from the release binary, FROM scratch.
#
#   helm/image/build.sh                    # static release binary, then image portcullis:<version>
#   helm/image/build.sh --tag NAME:TAG     # another tag
#   helm/image/build.sh --binary-only      # only the static binary (integration/run.sh does this)
#   helm/image/build.sh --context DIR      # assemble the build context in DIR; no docker build
#
# The binary is linked statically against glibc (crt-static); the path is printed last.
# Uses DOCKER_BUILDKIT=0 (the legacy builder needs no buildx and no network).
set -euo pipefail
cd "$(dirname "$0")/../.."

target=x86_64-unknown-linux-gnu
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag="portcullis:$version"
context=""
binary_only=false
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --context) context=$2; shift 2 ;;
        --binary-only) binary_only=true; shift ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target" --bin portcullis
binary="${CARGO_TARGET_DIR:-target}/$target/release/portcullis"
if $binary_only; then
    echo "$binary"
    exit 0
fi

keep=true
if [ -z "$context" ]; then
    context=$(mktemp -d)
    keep=false
fi
rootfs="$context/rootfs"
mkdir -p "$rootfs/etc/ssl/certs" "$context/home"
cp helm/image/Dockerfile "$context/"
cp "$binary" "$rootfs/portcullis"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
echo "portcullis:x:65532:65532:portcullis:/var/lib/portcullis:/sbin/nologin" > "$rootfs/etc/passwd"
echo "portcullis:x:65532:" > "$rootfs/etc/group"
echo "portcullis's working directory. Mount a volume here (or at state_dir) to keep its CA." \
    > "$context/home/README"
# A dynamic binary (should crt-static ever stop working) takes what ldd names along.
for lib in $(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' || true); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

if [ "$keep" = true ]; then
    echo "$context"
    exit 0
fi
DOCKER_BUILDKIT=0 docker build -t "$tag" "$context"
rm -rf "$context"
echo "$tag"
