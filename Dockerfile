# Container images of the VAE anomaly-scoring service. Three targets:
#
#   serve   `vae serve` with ONNX Runtime; no torch            docker build --target serve -t vae-serve .
#   train   `vae train` with a CPU build of torch              docker build --target train -t vae-train .
#   proxy   nginx in front of every replica of `serve`         docker build --target proxy -t vae-proxy .
#
# docker-compose.yml builds and wires all three; docs/containers.md explains the build arguments.
#
# Every step also works on a plain Debian bookworm base that has only python3 and python3-venv:
# Python is always `python3` or the virtual environment's own, never a bare `python` or `pip`.
#
# Behind a proxy that re-signs TLS, pass a CA bundle (all the CAs pip must trust, not just the
# proxy's) as a build secret. It is mounted only while pip runs and never lands in a layer:
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...
#   podman build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# base: the runtime user, the model volume's mount point, and an environment that puts the
# virtual environment first. PATH is spelled out, since an imported base image may set none.
FROM ${BASE_IMAGE} AS base
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
# /models is created here, owned by the runtime user, so that a new named volume mounted there
# starts out writable for `vae train` (Docker and Podman copy the mount point's owner into it).
RUN groupadd --gid 10001 vae \
    && useradd --no-log-init --uid 10001 --gid vae --home-dir /home/vae --create-home --shell /usr/sbin/nologin vae \
    && mkdir -p /models /data \
    && chown vae:vae /models

# ---------------------------------------------------------------------------------------------
# venv: an empty virtual environment, from the base image's own python3.
FROM base AS venv
RUN python3 -m venv /opt/venv

# ---------------------------------------------------------------------------------------------
# requirements: the dependency lists of pyproject.toml as requirement files. The stages below copy
# only these files, so a change elsewhere in pyproject.toml (the version, the test extra) leaves
# their install layers cached.
FROM base AS requirements
WORKDIR /build
COPY pyproject.toml scripts/container_requirements.py ./
RUN python3 container_requirements.py pyproject.toml > serve-requirements.txt \
    && python3 container_requirements.py pyproject.toml train > train-requirements.txt

# ---------------------------------------------------------------------------------------------
# serve-deps: the serving dependencies, installed before any source is copied.
FROM venv AS serve-deps
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
WORKDIR /build
COPY --from=requirements /build/serve-requirements.txt ./
# The CA secret, when given, replaces pip's bundle; the pip cache is a cache mount, not a layer.
RUN --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/venv/bin/python -m pip install --requirement serve-requirements.txt

# ---------------------------------------------------------------------------------------------
# wheel: the project itself, as a wheel with no dependencies. Its layers are the only ones that a
# change of source invalidates.
FROM venv AS wheel
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY training ./training
COPY service ./service
COPY vae_cli ./vae_cli
COPY client ./client
RUN --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/venv/bin/python -m pip wheel --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------------------
# train-deps: a CPU build of torch, then the `train` extra.
#   TORCH_INDEX_URL  where torch comes from: the PyTorch CPU index by default. Empty: from
#                    PIP_INDEX_URL and PIP_FIND_LINKS instead (a mirror, or a folder of wheels).
#   TORCH_VERSION    must satisfy the `train` extra in pyproject.toml.
# A CUDA build (PyPI's Linux wheel, several GB) is refused rather than installed by accident.
FROM serve-deps AS train-deps
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
COPY --from=requirements /build/train-requirements.txt ./
RUN --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && if [ -n "$TORCH_INDEX_URL" ]; then set -- --index-url "$TORCH_INDEX_URL"; fi \
    && /opt/venv/bin/python -m pip install "$@" "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/python -c "import sys, torch; sys.exit(f'torch {torch.__version__} is a CUDA build: use a CPU wheel' if torch.version.cuda else 0)" \
    && /opt/venv/bin/python -m pip install --requirement train-requirements.txt

# ---------------------------------------------------------------------------------------------
# serve: `vae serve` on 0.0.0.0:8000 (REST) and 8001 (OIP v2 gRPC) as an unprivileged user, configured by VAE_*
# variables. 8000 and 8001 are Triton's ports for the same two protocols; VAE_GRPC_PORT= (empty) turns gRPC off.
# It grows from serve-deps rather than copying the environment out of it, so that its layers are
# shared with the train image and a change of source rebuilds only the small layers below.
FROM serve-deps AS serve
COPY --from=wheel /dist /tmp/dist
RUN /opt/venv/bin/python -m pip install --no-deps --no-index --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit('torch is in the serve image' if importlib.util.find_spec('torch') else 0)"
COPY scripts/container_healthcheck.py /opt/vae/healthcheck.py
ENV VAE_MODEL_DIR=/models/digits \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_GRPC_PORT=8001 \
    VAE_RUNTIME=onnx
# vae (created in base); numeric, so that a runtime can check that it is not root
USER 10001:10001
WORKDIR /home/vae
EXPOSE 8000 8001
# /readyz answers 200 once the model is loaded and warmed, 503 while loading or draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/vae/healthcheck.py"]
ENTRYPOINT ["vae", "serve"]

# ---------------------------------------------------------------------------------------------
# train: `vae train` into $VAE_MODEL_DIR, once (scripts/container_train.sh says how to configure it).
FROM train-deps AS train
COPY --from=wheel /dist /tmp/dist
RUN /opt/venv/bin/python -m pip install --no-deps --no-index --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist
COPY scripts/container_train.sh /usr/local/bin/vae-train
ENV VAE_MODEL_DIR=/models/digits \
    VAE_TRAIN_DATA=digits \
    MPLCONFIGDIR=/tmp/matplotlib
# vae (created in base); numeric, so that a runtime can check that it is not root
USER 10001:10001
WORKDIR /home/vae
ENTRYPOINT ["vae-train"]

# ---------------------------------------------------------------------------------------------
# proxy: nginx from the base image's Debian release, listening on 8080 as an unprivileged user, and
# spreading requests over every address that the name `serve` resolves to (one per replica).
FROM ${BASE_IMAGE} AS proxy
# Not pinned (DL3008): the version is whatever the base image's Debian release ships, and a pin
# would break the build at its next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /etc/nginx/sites-enabled/default
COPY scripts/nginx.conf.template /etc/vae/nginx.conf.template
COPY scripts/container_proxy.sh /usr/local/bin/vae-proxy
# www-data, a fixed id in Debian (base-passwd)
USER 33:33
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
ENTRYPOINT ["vae-proxy"]
