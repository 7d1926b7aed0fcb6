"""`make demo`: train quick models (or reuse them), export, index, then serve and show requests.

Each step is skipped when its bundle already exists, so a second run serves within a minute.
The server runs as a child process (`embedserve serve`, no torch in it) in the foreground
until Ctrl-C; once it is ready the demo prints example requests with their live answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from export.bundle import BundleError, open_bundle

WORDS_MODEL = "gcide-words"


@dataclass(frozen=True)
class Step:
    title: str  # what the step makes, as the demo prints it
    bundle: str  # the model it produces; present means the step is done
    run: Callable[[Path], object]  # makes the bundle under the artifacts folder


def _train_words(artifacts: Path) -> None:
    from embedserve.pipelines import GCIDE_CORPUS, train_word2vec_bundle
    from training.methods.word2vec import quick_config

    train_word2vec_bundle(quick_config(str(GCIDE_CORPUS)), artifacts, WORDS_MODEL)


STEPS = [
    Step("word2vec skip-gram on the GCIDE dictionary", WORDS_MODEL, _train_words),
]

EXAMPLES = [
    ("analogy: king - man + woman", "GET", "/analogy?a=king&b=man&c=woman&k=5", None),
    ("nearest words to 'ocean'", "GET", "/similar?word=ocean&k=5", None),
]


def _exists(artifacts: Path, name: str) -> bool:
    try:
        open_bundle(artifacts, name)
        return True
    except BundleError:
        return False


def prepare(artifacts: Path) -> None:
    """Run every step whose bundle is missing."""
    for i, step in enumerate(STEPS, 1):
        prefix = f"[{i}/{len(STEPS)}] {step.title}"
        if _exists(artifacts, step.bundle):
            print(f"{prefix}: reusing the bundle '{step.bundle}'", flush=True)
            continue
        print(f"{prefix}: training (first run only)", flush=True)
        start = time.perf_counter()
        step.run(artifacts)
        print(f"{prefix}: done in {time.perf_counter() - start:.0f} s", flush=True)


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}; see its log above")
        try:
            if _get(base + "/readyz", timeout_s=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not become ready within {timeout_s:.0f} s")


def show_examples(base: str) -> None:
    print("\nThe server is ready. Example requests, with their answers now:\n", flush=True)
    for title, method, path, _ in EXAMPLES:
        status, body = _get(base + path)
        try:
            results = json.loads(body).get("results", body)
            answer = ", ".join(f"{r['word']} ({r['score']:.2f})" for r in results)
        except (ValueError, TypeError, KeyError, AttributeError):
            answer = body
        print(f"# {title}\ncurl '{base}{path}'\n  -> {status}: {answer}\n", flush=True)
    print(f"API docs: {base}/docs   metrics: {base}/metrics   Ctrl-C stops the server.\n", flush=True)


def run_demo(artifacts: Path, serve: bool = True, host: str = "127.0.0.1", port: int = 8000) -> None:
    artifacts = Path(artifacts)
    prepare(artifacts)
    if not serve:
        return
    command = [sys.executable, "-m", "embedserve", "serve", "--artifacts", str(artifacts), "--host", host, "--port", str(port)]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        base = f"http://{host}:{port}"
        _wait_ready(base, server)
        show_examples(base)
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
