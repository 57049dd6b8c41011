#!/usr/bin/env bash
# Build Corral's container images with Podman on a machine that can pull nothing.
#
#   deploy/compose/build-images.sh [all|wheels|base|corral|rabbitmq]    (`make images`: all)
#
#   wheels    dist/image/corral: the workspace's wheels (uv build); dist/image/deps: every
#             dependency uv.lock names as a binary wheel (uv export + pip download; skipped while
#             the exported requirements are unchanged, and pip's own cache serves repeats)
#   base      localhost/corral-base:bookworm: Debian bookworm with Python 3.11 made by
#             debootstrap; the root filesystem is kept in ~/.cache/corral/images and re-imported
#             from there, so debootstrap runs once per machine
#   corral    localhost/corral:latest (the services, the Dockerfile's default target) and
#             localhost/corral-standins:latest (the emulator and SecantusDB for the local
#             compose check), both from the top-level Dockerfile on the base above
#   rabbitmq  localhost/corral-rabbitmq:local: Debian's rabbitmq-server with the management
#             and Prometheus plugins (deploy/compose/rabbitmq.Containerfile), kept in
#             ~/.cache/corral/images as a saved image
#
# Each step prints its wall time. Podman runs with deploy/compose/containers.conf (runc,
# cgroupfs) unless CONTAINERS_CONF names another file.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export PATH="$HOME/.local/bin:$PATH"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/compose/containers.conf}
UV=${UV:-uv}
CACHE=${CORRAL_IMAGE_CACHE:-$HOME/.cache/corral/images}
WHEELS=dist/image/deps
CORRAL_WHEELS=dist/image/corral
BASE_IMAGE=${CORRAL_BASE_IMAGE:-localhost/corral-base:bookworm}
CORRAL_IMAGE=${CORRAL_IMAGE:-localhost/corral:latest}
STANDINS_IMAGE=${CORRAL_STANDINS_IMAGE:-localhost/corral-standins:latest}
RABBITMQ_IMAGE=${CORRAL_RABBITMQ_IMAGE:-localhost/corral-rabbitmq:local}
SUITE=bookworm
PIP_VERSION=25.1.1
ARCH=$(uname -m)

SERVICES=(corral-gateway corral-scheduler corral-model-manager corral-session-store)
STANDINS=(corral-emulator corral-devstack)

say() { printf '[build-images] %s\n' "$*" >&2; }

timed() {
    local what=$1 started tenths
    shift
    started=$(date +%s%N)
    "$@"
    tenths=$((($(date +%s%N) - started) / 100000000))
    say "$what: $((tenths / 10)).$((tenths % 10)) s"
}

export_requirements() {
    local out=$1 args=()
    shift
    for package in "$@"; do args+=(--package "$package"); done
    "$UV" export --quiet --frozen --no-dev --no-emit-workspace "${args[@]}" -o "$out"
}

wheels() {
    mkdir -p "$WHEELS" "$CORRAL_WHEELS"
    rm -f "$CORRAL_WHEELS"/*.whl
    "$UV" build --quiet --all-packages --wheel -o "$CORRAL_WHEELS"
    export_requirements "$WHEELS/services.txt" "${SERVICES[@]}"
    export_requirements "$WHEELS/standins.txt" "${STANDINS[@]}"
    local stamp
    stamp=$(cat "$WHEELS/services.txt" "$WHEELS/standins.txt" | sha256sum | cut -d' ' -f1)
    if [ -f "$WHEELS/.requirements.sha256" ] && [ "$(cat "$WHEELS/.requirements.sha256")" = "$stamp" ]; then
        say "dependency wheels up to date"
        return
    fi
    rm -f "$WHEELS"/*.whl
    # pip from PyPI through uv, at a pinned version: no Python on PATH need have pip (under
    # `uv run`, the project's environment has none).
    "$UV" tool run --quiet --from "pip==$PIP_VERSION" pip download --quiet \
        --disable-pip-version-check --no-deps \
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
        --platform "manylinux_2_28_$ARCH" --platform "manylinux2014_$ARCH" \
        --dest "$WHEELS" -r "$WHEELS/services.txt" -r "$WHEELS/standins.txt" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
    echo "$stamp" >"$WHEELS/.requirements.sha256"
}

debootstrap_rootfs() {
    local tarball=$1 rootfs
    command -v debootstrap >/dev/null || {
        say "debootstrap is missing (apt-get install debootstrap, or make deploy-tools)"
        exit 1
    }
    rootfs=$(mktemp -d /tmp/corral-rootfs.XXXXXX)
    # minbase: essential packages and apt; Python with venv, and CA certificates.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" >"$rootfs.log" 2>&1 || {
        tail -20 "$rootfs.log" >&2
        rm -rf "$rootfs"
        exit 1
    }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$CACHE"
    tar -C "$rootfs" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs" "$rootfs.log"
}

base() {
    if podman image exists "$BASE_IMAGE"; then
        say "$BASE_IMAGE present"
        return
    fi
    local tarball="$CACHE/debian-$SUITE-py-$ARCH.tar"
    [ -f "$tarball" ] || timed "debootstrap $SUITE" debootstrap_rootfs "$tarball"
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        "$tarball" "$BASE_IMAGE" >/dev/null
}

build() {
    # --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
    podman build --quiet --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" . >/dev/null
}

corral() {
    base
    if [ ! -f "$WHEELS/services.txt" ] || ! ls "$CORRAL_WHEELS"/corral_common-*.whl >/dev/null 2>&1; then
        wheels
    fi
    # The last build stages are tagged, so that pruning what earlier builds left untagged keeps
    # them and the stages below them, and with them the builder's cache (installing every
    # dependency above all).
    local stage
    for stage in services-venv standins-venv; do
        build --target "$stage" -t "localhost/corral-build:$stage"
    done
    build --target runtime -t "$CORRAL_IMAGE"
    build --target standins -t "$STANDINS_IMAGE"
    podman image prune --force >/dev/null
}

rabbitmq() {
    base
    if podman image exists "$RABBITMQ_IMAGE"; then
        say "$RABBITMQ_IMAGE present"
        return
    fi
    local saved="$CACHE/corral-rabbitmq-$ARCH.tar"
    if [ -f "$saved" ]; then
        podman load --quiet --input "$saved" >/dev/null
        return
    fi
    podman build --quiet --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -f deploy/compose/rabbitmq.Containerfile -t "$RABBITMQ_IMAGE" deploy/compose >/dev/null
    mkdir -p "$CACHE"
    podman save --quiet --output "$saved.partial" "$RABBITMQ_IMAGE" && mv "$saved.partial" "$saved"
}

# One build at a time on this machine (two test sessions may ask at once): they share the
# wheelhouse, the image tags and the prune.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-images.lock"
flock 9

case "${1:-all}" in
    wheels) timed wheels wheels ;;
    base) timed base base ;;
    corral) timed "corral images" corral ;;
    rabbitmq) timed "rabbitmq image" rabbitmq ;;
    all)
        timed wheels wheels
        timed base base
        timed "corral images" corral
        timed "rabbitmq image" rabbitmq
        ;;
    *)
        say "usage: $0 [all|wheels|base|corral|rabbitmq]"
        exit 2
        ;;
esac
