"""The server needs none of the training packages: with torch, onnx, transformers and the rest
made unimportable, it starts and serves images, texts and words (the server image has none of them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TRAINING_PACKAGES = ("torch", "torchvision", "onnx", "transformers", "sentence_transformers", "numba", "sklearn",
                     "scipy", "gensim", "training", "export")

_SERVE = """
import base64, sys
for name in sys.argv[2].split(","):
    sys.modules[name] = None  # `import name` now raises ImportError, wherever it comes from
from fastapi.testclient import TestClient
from serving.app import create_app
from serving.settings import Settings
with TestClient(create_app(Settings(artifacts_dir=sys.argv[1]))) as client:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    png = base64.b64encode(open(sys.argv[3], "rb").read()).decode()
    image = client.post("/embed/image", json={"images": [png], "model": "tiny"})
    assert image.status_code == 200, image.text
    words = client.get("/analogy?a=king&b=man&c=woman&model=words")
    assert words.status_code == 200 and words.json()["results"][0]["word"] == "queen", words.text
print("served")
"""


def test_the_server_serves_without_the_training_packages(image_artifacts: Path, words_artifacts: Path, make_png,
                                                         tmp_path: Path):
    assert image_artifacts == words_artifacts  # both fixtures write into tmp_path: one artifacts folder, two models
    png = tmp_path / "image.png"
    png.write_bytes(make_png(0))
    run = subprocess.run([sys.executable, "-c", _SERVE, str(image_artifacts), ",".join(TRAINING_PACKAGES), str(png)],
                         capture_output=True, text=True, timeout=180, cwd=Path(__file__).resolve().parents[2],
                         env={**os.environ, "EMBEDSERVE_ALLOWED_HOSTS": "testserver"})
    assert run.returncode == 0 and "served" in run.stdout, run.stderr[-3000:]
