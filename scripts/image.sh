#!/usr/bin/env bash
# `make image`: build the agent image from the Dockerfile and print its reference and size.
#  - with a running Docker engine: `docker build`; else buildah (scripts/image-setup.sh
#    installs it), with the debian:12-slim base made locally when no registry serves it
#    (scripts/image-base.sh);
#  - pip inside the build trusts the host's CA bundle (a build secret, never in a layer), for
#    networks that intercept TLS: $PIP_CERT, else /etc/ssl/certs/ca-certificates.crt;
#  - cached: the image carries the hash of the Dockerfile and of the build context (what
#    pip installs), and a run whose hash matches the existing image's does nothing; buildah's
#    layer cache keeps the dependencies' layer while pyproject.toml is unchanged.
# Environment: NODEWARDEN_IMAGE (default ghcr.io/nodewarden/nodewarden:<agent version>,
# the chart's default), NODEWARDEN_IMAGE_REBUILD=1 to build anew. Prints the reference last.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' agent/__init__.py)
ref=${NODEWARDEN_IMAGE:-ghcr.io/nodewarden/nodewarden:$version}

# the cache key: the Dockerfile, .dockerignore and every file of the build context it lets in
hash=$({ sha256sum Dockerfile .dockerignore pyproject.toml README.md
         find agent rules bpf -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
             | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-32)
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
secret=()
[ -s "$cert" ] && secret=(--secret "id=pip-cert,src=$cert")
label=org.nodewarden.source-hash
start=$(date +%s)

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    if [ "${NODEWARDEN_IMAGE_REBUILD:-0}" = 1 ] || [ "$(docker image inspect \
            --format "{{index .Config.Labels \"$label\"}}" "$ref" 2>/dev/null)" != "$hash" ]; then
        DOCKER_BUILDKIT=1 docker build "${secret[@]}" --label "$label=$hash" -t "$ref" . >&2
        how="built by docker in $(( $(date +%s) - start )) s"
    else
        how="cached"
    fi
    size=$(docker image inspect --format '{{.Size}}' "$ref")
else
    "$here/scripts/image-setup.sh"
    "$here/scripts/image-base.sh"
    if [ "${NODEWARDEN_IMAGE_REBUILD:-0}" = 1 ] || [ "$(buildah inspect --type image \
            --format "{{index .OCIv1.Config.Labels \"$label\"}}" "$ref" 2>/dev/null)" != "$hash" ]; then
        log=$(mktemp)
        # chroot isolation and the host's network: no runtime namespaces needed, so it
        # builds where podman/crun cannot run containers (hybrid cgroups, no CAP_SYS_RESOURCE)
        if ! buildah bud --isolation chroot --network host --pull-never --layers \
                "${secret[@]}" --label "$label=$hash" -t "$ref" . >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "image: buildah bud failed (full log: $log)" >&2
            exit 1
        fi
        rm -f "$log"
        how="built by buildah in $(( $(date +%s) - start )) s"
    else
        how="cached"
    fi
    size=$(buildah inspect --type image --format '{{.FromImageID}}' "$ref" >/dev/null \
           && buildah images --format '{{.Size}}' --filter "reference=$ref" | head -n 1)
fi
echo "image: $ref, $size, $how" >&2
echo "$ref"
