# syntax=docker/dockerfile:1
# The nodewarden agent image, as charts/nodewarden runs it. Not built in CI (no Docker
# engine there); tests/chart/test_dockerfile.py checks its structure.
#
#   docker build -t ghcr.io/nodewarden/nodewarden:$(python3 -c 'import agent; print(agent.__version__)') .
#
# Debian 12 for the same reason as scripts/setup.sh: python3-bpfcc gives BCC's Python
# bindings and libbcc with the LLVM it compiles the BPF C with. The kernel headers are not
# in the image: the chart mounts the node's /lib/modules and /usr/src, so BCC compiles
# against the running kernel's own headers.
FROM debian:12-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-bpfcc \
    && rm -rf /var/lib/apt/lists/*

# A venv from Debian's python3 with system site packages, so the `bcc` module that
# python3-bpfcc installs under /usr/lib/python3/dist-packages is importable; nodewarden
# and its PyPI dependencies go into the venv, leaving Debian's Python untouched.
# The source is bind-mounted read-write for the build only (its writes are discarded) and
# installed non-editable: the wheel carries the rules and BPF sources as package data.
ENV VIRTUAL_ENV=/opt/nodewarden
RUN --mount=type=bind,source=.,target=/src,rw \
    python3 -m venv --system-site-packages "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir /src \
    && "$VIRTUAL_ENV/bin/python" -c "import agent.rules, agent.bpf, bcc"

# Findings are JSON lines on stdout: unbuffered, so each reaches the log when it happens.
# Bytecode was compiled by pip above; the chart mounts the root filesystem read-only.
ENV PATH=/opt/nodewarden/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# root: the agent reads every process's /proc entries, loads BPF programs and signals
# processes of any user (the chart's securityContext narrows what root may do).
USER root
EXPOSE 9808
ENTRYPOINT ["nodewarden"]
CMD ["run", "--config", "/etc/nodewarden/config/config.yaml"]
