#!/bin/sh
# `fill` in deploy/compose.yaml: the trainer's artifacts and the job sources into the stack's volumes.
# Copies the bundles (artifacts/models) and the Triton repository `embedserve export --triton` wrote
# (artifacts/triton), not the trainer's own jobs, caches or FAISS indexes (the stack's indexes live in
# Milvus, built by jobs); then the job sources. Run again to add models: what is there stays.
set -eu
from=${FILL_FROM:-/mnt}  # ARTIFACTS_SOURCE and DATA_SOURCE are mounted at $from/artifacts and $from/data
to=${FILL_TO:-/srv}  # the volumes, at $to/artifacts and $to/data
for folder in models triton; do
    if [ -d "$from/artifacts/$folder" ]; then
        mkdir -p "$to/artifacts/$folder"
        cp -R "$from/artifacts/$folder/." "$to/artifacts/$folder/"
    fi
done
mkdir -p "$to/artifacts/triton"  # Triton serves it, empty or not
if [ -d "$from/data" ]; then
    cp -R "$from/data/." "$to/data/"
fi
echo "models: $(ls "$to/artifacts/models" 2>/dev/null | tr '\n' ' ')"
echo "triton models: $(ls "$to/artifacts/triton" | tr '\n' ' ')"
