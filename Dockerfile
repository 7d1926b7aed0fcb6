# Two images from one file:
#   docker build -t embedserve .                        the server (default target): CUDA runtime,
#                                                       the project with its `gpu` extra, no torch
#   docker build --target train -t embedserve-train .   the same plus `train` (torch, torchvision,
#                                                       onnx, ...) for training and export
# Mount trained artifacts at /srv/artifacts (bundles and indexes written by `embedserve export`
# and `embedserve index build`); the server loads every model's current version at start-up.
# CUDA 12.6 and cuDNN 9: what the `gpu` extra's onnxruntime-gpu (< 1.27) and faiss-gpu are built for.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Ubuntu's packages unpinned: the base image's tag fixes the release, and the archive drops old versions.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY training training
COPY export export
COPY index index
COPY serving serving
COPY embedserve embedserve
# The GPU runtimes only: onnxruntime-gpu without onnxruntime (the two are one module, and with
# both installed CUDA is not used), faiss-gpu without faiss-cpu. Pillow is the one deploy/triton.Dockerfile
# pins: Triton's preprocessing models and the gateway then compute the same input bit for bit. The
# project's own dependencies are the ranges of pyproject.toml (the `gpu` extra pins the CUDA pairs).
# hadolint ignore=DL3013
RUN pip install '.[gpu]' pillow==12.3.0
# The server runs as an unprivileged user; what export writes is world-readable (0644/0755), so
# artifacts mounted from the trainer's machine are readable here. The folders where deploy/compose.yaml
# mounts its volumes exist in the image, owned by that user: an empty named volume is seeded from them
# (owner included), where it would otherwise be created owned by root and the server could not write
# jobs/, cache/ or locks/. 10001 is also the owner deploy/triton.Dockerfile gives them; USER names it
# by number, which a host or Kubernetes' runAsNonRoot can check without the image's /etc/passwd.
RUN groupadd --system --gid 10001 embedserve \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/embedserve embedserve \
    && mkdir -p /srv/artifacts/triton /srv/data \
    && chown -R 10001:10001 /srv/artifacts /srv/data
ENV EMBEDSERVE_ARTIFACTS_DIR=/srv/artifacts

FROM base AS train
# hadolint ignore=DL3013
RUN pip install '.[gpu,train]' pillow==12.3.0 && chown -R 10001:10001 /app
USER 10001:10001
CMD ["embedserve", "--help"]

FROM base AS server
USER 10001:10001
# On 0.0.0.0 the server refuses to start without keys: pass EMBEDSERVE_API_KEYS (or mount a file
# of their sha256 digests as EMBEDSERVE_API_KEYS_FILE), and the Host names clients use.
ENV EMBEDSERVE_HOST=0.0.0.0 EMBEDSERVE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
# exec form: SIGTERM reaches the server, which finishes the requests in flight and exits 0
CMD ["embedserve", "serve"]
