#!/usr/bin/env bash
# The tools `make image` and tests/container need, installed only for them (scripts/setup.sh
# leaves them out): buildah to build without a Docker engine, mmdebstrap to make the
# debian:12-slim base from Debian's repository when no registry serves it, runc to run the
# image as the chart's pod spec says. Idempotent; as root on Debian. With a running Docker
# engine only runc and mmdebstrap are still needed (for tests/container).
set -euo pipefail
pkgs=(buildah mmdebstrap runc)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "image-setup: need ${missing[*]}: install them (Debian: apt-get install" \
         "--no-install-recommends ${missing[*]}), or run this as root" >&2
    exit 1
fi
echo "image-setup: installing Debian packages: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
