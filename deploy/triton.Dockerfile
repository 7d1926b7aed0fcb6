# The Triton of deploy/compose.yaml: the official image plus Pillow. Each image model's
# `<model>_preprocess` (Python backend, written by `embedserve export --triton`) decodes images with
# embedserve's own runtime/preprocessing.py, which imports numpy and Pillow; the official image's
# Python has numpy (< 2) and no Pillow, and Triton refuses a model whose imports fail
# (triton-inference-server/server#6621). tests/triton_server.py installs exactly the packages this
# file installs into the Triton it runs, so the tests load the repository with this image's Python.
#   docker build -t embedserve-triton:24.08 -f deploy/triton.Dockerfile deploy   (or: docker compose build triton)
ARG TRITON_TAG=24.08
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3

# The newest Pillow for the image's Python 3.10 (Pillow 13 wants 3.11).
RUN pip3 install --no-cache-dir pillow==12.3.0

# The artifacts volume's skeleton, owned by the uid the embedserve images run as (10001, ../Dockerfile):
# whichever image first mounts the empty named volume seeds it with this folder, and the gateway can
# still create its own folders beside triton/. Triton only reads the repository. no-models is what
# triton-serve.sh serves where the repository folder is missing.
RUN mkdir -p /srv/artifacts/triton /opt/embedserve/no-models && chown -R 10001:10001 /srv/artifacts
COPY triton-serve.sh /opt/embedserve/triton-serve.sh
