#!/bin/sh
# Triton's command in deploy/compose.yaml: serve the repository `embedserve export --triton` writes
# (the artifacts volume's triton/), or, where that folder does not exist (shared storage that no
# image seeded, a volume filled without it), an empty one with a line saying what to do, so a
# missing repository leaves a Triton without models rather than one that exits and holds every
# service that waits for it. Any arguments are added to tritonserver's.
set -eu
repository=${TRITON_MODEL_REPOSITORY:-/srv/artifacts/triton}
if [ ! -d "$repository" ]; then
    echo "triton-serve: no model repository at $repository: serving none. Fill the artifacts volume" \
         "(docker compose -f deploy/compose.yaml run --rm fill, deploy/README.md), then restart triton." >&2
    repository=${TRITON_EMPTY_REPOSITORY:-/opt/embedserve/no-models}
fi
# A model that fails to load is reported by the gateway's /readyz (it asks Triton for each model),
# not a reason to exit; ready means serving, whatever loaded.
exec tritonserver --model-repository="$repository" --exit-on-error=false --strict-readiness=false \
    --exit-timeout-secs=30 "$@"
