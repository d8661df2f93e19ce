#!/usr/bin/env bash
# The base image the Dockerfile's FROM names (debian:12-slim), in buildah's local storage:
# kept when there (made by an earlier run with the same recipe, or pulled), else pulled
# from a registry, else made here from Debian's repository the way the official slim image
# is (mmdebstrap minbase, merged /usr, no docs/man/locales) and imported under that name.
#   NODEWARDEN_BASE=pull|make   only that way;  NODEWARDEN_IMAGE_REBUILD=1  make it anew
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ref=docker.io/library/debian:12-slim
# a base made here carries the hash of this script: a changed recipe makes it anew
recipe=$(sha256sum "$0" | cut -c1-16)
# the image's recipe label: "none" when absent, empty when pulled from a registry
have=$(buildah inspect --type image \
       --format '{{index .OCIv1.Config.Labels "org.nodewarden.base-recipe"}}' "$ref" \
       2>/dev/null || echo none)
if [ "${NODEWARDEN_IMAGE_REBUILD:-0}" != 1 ] && { [ -z "$have" ] || [ "$have" = "$recipe" ]; }; then
    exit 0   # pulled earlier, or made here by this recipe
fi
grep -q "^FROM debian:12-slim AS build$" "$here/Dockerfile" || {
    echo "image-base: the Dockerfile's FROM is not debian:12-slim any more: update $0" >&2; exit 1; }

if [ "${NODEWARDEN_BASE:-}" != make ] && timeout 60 buildah pull -q "$ref" >/dev/null 2>&1; then
    echo "image-base: pulled $ref" >&2
    exit 0
fi
if [ "${NODEWARDEN_BASE:-}" = pull ]; then
    echo "image-base: cannot pull $ref (NODEWARDEN_BASE=pull)" >&2; exit 1
fi
command -v mmdebstrap >/dev/null || { echo "image-base: no registry serves $ref and" \
    "mmdebstrap is missing (scripts/image-setup.sh installs it)" >&2; exit 1; }
echo "image-base: no registry serves $ref: making it with mmdebstrap (about a minute)" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mirror=${NODEWARDEN_DEBIAN_MIRROR:-http://deb.debian.org}
slim=()
for p in /usr/share/doc/'*' /usr/share/man/'*' /usr/share/info/'*' /usr/share/locale/'*' \
         /usr/share/lintian/'*' /usr/share/groff/'*'; do
    slim+=("--dpkgopt=path-exclude=$p")
done
mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    "${slim[@]}" --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm "$tmp/rootfs.tar" \
    "deb $mirror/debian bookworm main" "deb $mirror/debian bookworm-updates main" \
    "deb $mirror/debian-security bookworm-security main"
ctr=$(buildah from scratch)
buildah add --quiet "$ctr" "$tmp/rootfs.tar" / >/dev/null
buildah config --cmd '["bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.nodewarden.base-recipe="$recipe" "$ctr"
buildah commit --quiet --rm "$ctr" "$ref" >/dev/null
echo "image-base: made $ref" >&2
