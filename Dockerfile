# p2pmodel peer image. CPU by default:
#   docker build -t p2pmodel .
# GPU hosts (CUDA base image + CUDA torch wheel; run with --gpus all and --device cuda):
#   docker build -t p2pmodel:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Any BASE_IMAGE with Python >= 3.11 or a Debian/Ubuntu one whose python3 is >= 3.11 works: the builder and
# the runtime stage share one base, so the virtual environment copied between them matches its interpreter.
# hivemind ships its p2pd binary in a manylinux x86_64 wheel: build for linux/amd64.
# See peers/README.md for running a swarm (docker compose, cloud instances, ports, identity).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- base: the interpreter (installed from the distribution where the base image has none, e.g. nvidia/cuda)
FROM ${BASE_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# The package set depends on BASE_IMAGE (Debian, Ubuntu, ...), so versions cannot be pinned here.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c "import sys; assert sys.version_info >= (3, 11), 'p2pmodel needs Python >= 3.11'"

# ---- builder: torch (CPU wheel unless TORCH_INDEX_URL says otherwise), then p2pmodel and its dependencies
FROM base AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY p2pmodel ./p2pmodel
# pip precompiles the bytecode here: the runtime user cannot write to /opt/venv, and startup (and every
# HEALTHCHECK run) stays fast.
RUN pip install --no-cache-dir .

# ---- runtime: the virtual environment, the config recipes, a non-root user and one volume
FROM base AS runtime
LABEL org.opencontainers.image.title="p2pmodel" \
      org.opencontainers.image.description="Peer-to-peer DiLoCo training daemon" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 p2pmodel \
    && useradd --system --uid 10001 --gid p2pmodel --create-home --home-dir /home/p2pmodel p2pmodel \
    && mkdir -p /data /swarm \
    && chown p2pmodel:p2pmodel /data /swarm
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY configs ./configs
# The docker compose swarm's entrypoint; /swarm is where its bootstrap publishes its address (peers/README.md).
COPY --chmod=0755 peers/entrypoint.sh /usr/local/bin/p2pmodel-compose-entrypoint
USER 10001:10001
# /data: identity key(s), checkpoints, ledger. Keep it on a volume so a restarted container is the same peer.
VOLUME ["/data"]
# 31337/tcp: libp2p (DHT, averaging, gossip); 8080/tcp: local status endpoint (GET /status, GET /metrics).
EXPOSE 31337/tcp 8080/tcp
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["p2pmodel", "peer", "status", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["p2pmodel"]
# Default: a peer on the embedded default that starts a new swarm (add --initial-peers MADDR to join one). Its
# status endpoint binds all of the container's interfaces so that `-p 127.0.0.1:8080:8080` can reach it.
CMD ["peer", "run", "--config", "configs/tiny.toml", "--data-dir", "/data", "--identity", "/data/identity.key", \
     "--status-port", "8080", "--set", "observability.status_host=0.0.0.0", \
     "--set", "swarm.host_maddrs=[\"/ip4/0.0.0.0/tcp/31337\"]"]
