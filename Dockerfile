# The GPU server image: CUDA runtime, the project with its `gpu` extra, `embedserve serve`.
# Mount trained artifacts at /srv/artifacts (bundles and indexes written by `embedserve export`
# and `embedserve index build`); the server loads every model's current version at start-up.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
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
RUN pip install '.[gpu]'
# The server runs as an unprivileged user; what export writes is world-readable (0644/0755), so
# artifacts mounted from the trainer's machine are readable here.
RUN useradd --system --uid 10001 --no-create-home embedserve
USER embedserve

# On 0.0.0.0 the server refuses to start without keys: pass EMBEDSERVE_API_KEYS (or mount a file
# of their sha256 digests as EMBEDSERVE_API_KEYS_FILE), and the Host names clients use.
ENV EMBEDSERVE_ARTIFACTS_DIR=/srv/artifacts EMBEDSERVE_HOST=0.0.0.0 EMBEDSERVE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["embedserve", "serve"]
