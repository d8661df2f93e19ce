# syntax=docker/dockerfile:1
# The nodewarden agent image, as charts/nodewarden runs it. `make image` builds it (with a
# Docker engine when there is one, else buildah, making the debian:12-slim base locally
# when no registry serves it: scripts/image.sh); tests/container/ runs it under runc as
# the chart's pod spec says.
#
#   docker build --secret id=pip-cert,src=/etc/ssl/certs/ca-certificates.crt \
#       -t ghcr.io/nodewarden/nodewarden:$(python3 -c 'import agent; print(agent.__version__)') .
#
# Debian 12 for the same reason as scripts/setup.sh: python3-bpfcc gives BCC's Python
# bindings and libbcc with the LLVM it compiles the BPF C with. The kernel headers are not
# in the image: the chart mounts the node's /lib/modules and /usr/src, so BCC compiles
# against the running kernel's own headers. No compiler is in the image either: libbcc
# carries clang and LLVM as libraries.
#
# Two stages: the build stage has pip and the source; the image gets only the venv.

FROM debian:12-slim AS build

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-bpfcc \
    && rm -rf /var/lib/apt/lists/*

# A venv from Debian's python3 with system site packages, so the `bcc` module that
# python3-bpfcc installs under /usr/lib/python3/dist-packages is importable; nodewarden
# and its PyPI dependencies go into the venv, leaving Debian's Python untouched.
# The dependencies and the build backend first (from pyproject.toml alone), so a source
# change reuses their layer and the package's own install needs no network.
# pip-cert: where TLS is intercepted, the CA bundle pip must trust (a build secret, never
# in a layer); without it pip uses its own bundle.
ENV VIRTUAL_ENV=/opt/nodewarden
COPY pyproject.toml /src/pyproject.toml
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python3 -m venv --system-site-packages "$VIRTUAL_ENV" \
    && python3 -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb')); \
print(*p['project']['dependencies'], *p['build-system']['requires'], sep='\n')" \
        > /src/requirements.txt \
    && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir -r /src/requirements.txt

# The package itself, non-editable: the wheel carries the rules and BPF sources as package
# data. Then out of the venv goes what the agent never runs (about 90 MB): pip and the
# build backend (nothing installs at run time; the root filesystem is read-only), and the
# kubernetes client's asyncio copy, kubernetes.aio, with aiohttp and its dependencies,
# which only aio imports (the agent uses the synchronous client; `import kubernetes` does
# not import aio).
COPY . /src
RUN "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --no-deps --no-build-isolation /src \
    && "$VIRTUAL_ENV/bin/pip" uninstall -y -q aiohttp aiohttp-retry aiosignal aiohappyeyeballs \
        frozenlist multidict propcache yarl \
    && "$VIRTUAL_ENV/bin/pip" uninstall -y -q wheel setuptools pip \
    && rm -r "$VIRTUAL_ENV"/lib/python3*/site-packages/kubernetes/aio \
    && "$VIRTUAL_ENV/bin/python" -c "import agent.rules, agent.bpf, agent.kubeapi, bcc"

FROM debian:12-slim

# python3 for the venv, python3-bpfcc for BCC; ca-certificates for the HTTPS of the Slack
# and webhook sinks.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-bpfcc ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/nodewarden
COPY --from=build /opt/nodewarden /opt/nodewarden

# Findings are JSON lines on stdout: unbuffered, so each reaches the log when it happens.
# Bytecode was compiled by pip above; the chart mounts the root filesystem read-only.
ENV PATH=/opt/nodewarden/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The image proves what the chart relies on: the venv sees BCC and the bundled package data.
RUN nodewarden --version \
    && python3 -c "import agent.rules, agent.bpf, bcc, kubernetes.client, kubernetes.watch"

# root: the agent reads every process's /proc entries, loads BPF programs and signals
# processes of any user (the chart's securityContext narrows what root may do).
USER root
EXPOSE 9808
ENTRYPOINT ["nodewarden"]
CMD ["run", "--config", "/etc/nodewarden/config/config.yaml"]
