"""Soak: the demo's server under mixed traffic at twice what it can serve, for ten minutes.

Starts `embedserve serve` on the demo's artifacts (127.0.0.1, a free port, one worker),
measures its capacity with a closed loop (CONCURRENCY clients sending the mix back to back for
`--capacity-s`), then offers twice that rate as an open loop (Poisson arrivals, whatever the
server answers) for `--duration-s`: image embeddings, zero-shot (cached class lists and new
ones), search by id, image and text, analogies and nearest words, text embeddings, and a batch
re-embedding job every `--job-every-s`. A server that pushes back answers the excess with 429
quickly; it must never answer 5xx, and its memory must stay flat. Prints one table and writes
bench/results/soak.json with the machine and the date: requests by status, p50/p99 of the
answered ones (from their scheduled send time, so a client-side wait counts too), /healthz p99
sampled each second, and the server's RSS after warm-up and at the end.

    embedserve demo --no-serve                  # once: the models and indexes the mix uses
    python bench/soak.py                        # 10 minutes
    python bench/soak.py --duration-s 60        # a quick look
    python bench/soak.py --smoke                # tiny stand-ins of the demo's models, seconds of each phase
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from embedserve.demo import CLIP_INDEX, CLIP_MODEL, IMAGE_INDEX, SIMCLR_MODEL, WORDS_MODEL  # noqa: E402
from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from bench.http_client import HOST, PooledClient, free_port, http_request, stop, wait_ready  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from runtime.bundle import BundleError, open_bundle  # noqa: E402
from runtime.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402

CONCURRENCY = 16  # clients of the closed loop that measures capacity
MAX_OUTSTANDING = 2048  # open-loop requests in flight at most; past it an arrival counts as "dropped by the client"
WORDS = ["king", "queen", "ocean", "river", "bread", "music", "winter", "horse", "paper", "stone"]
SMOKE = {"duration_s": 3.0, "capacity_s": 1.0, "warmup_s": 1.0, "job_every_s": 2.0}  # --smoke's phases
SMOKE_IMAGES = 1000  # --smoke: the test images its indexes hold


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


class Mix:
    """The requests of the traffic mix, drawn at random by weight."""

    def __init__(self, seed: int = 0, items: int = 10_000):
        self.items = items  # in the image index: the ids a search by id picks from
        images, labels = load_fashion_mnist(split="test")
        self.rng = random.Random(seed)
        self.images = []
        for i in range(64):
            out = io.BytesIO()
            Image.fromarray(images[i], "L").save(out, "PNG")
            self.images.append(base64.b64encode(out.getvalue()).decode())
        self.class_lists = [[f"a photo of a {c.lower()}" for c in FASHION_MNIST_CLASSES],
                            ["a sneaker", "a bag", "a dress"], ["a coat", "a shirt", "a sandal", "a trouser"]]
        self.kinds = [("embed_image", 25, self.embed_image), ("zero_shot", 15, self.zero_shot),
                      ("zero_shot_new_classes", 2, self.zero_shot_new), ("search_id", 10, self.search_id),
                      ("search_image", 10, self.search_image), ("search_text", 8, self.search_text),
                      ("analogy", 12, self.analogy), ("similar", 10, self.similar), ("embed_text", 8, self.embed_text)]
        self.weights = [w for _, w, _ in self.kinds]

    def draw(self) -> tuple[str, str, str, dict | None]:
        kind, _, make = self.rng.choices(self.kinds, self.weights)[0]
        return (kind, *make())

    def prebuilt(self, count: int, port: int) -> list[tuple[str, bytes]]:
        """`count` draws as whole HTTP/1.1 keep-alive requests: the client then only writes bytes."""
        requests = []
        for _ in range(count):
            kind, method, path, body = self.draw()
            data = json.dumps(body).encode() if body is not None else None
            requests.append((kind, http_request(method, path, port, data, "application/json")))
        return requests

    def _some_images(self, most: int) -> list[str]:
        return self.rng.sample(self.images, self.rng.randint(1, most))

    def embed_image(self):
        return "POST", f"/embed/image?model={SIMCLR_MODEL}", {"images": self._some_images(8)}

    def zero_shot(self):
        return "POST", "/zero-shot", {"images": self._some_images(4), "classes": self.rng.choice(self.class_lists),
                                      "model": CLIP_MODEL}

    def zero_shot_new(self):  # a class list nobody asked for: a class-matrix build (cache miss)
        classes = [f"a photo of {self.rng.choice(WORDS)} number {self.rng.randint(0, 10**6)}" for _ in range(20)]
        return "POST", "/zero-shot", {"images": self._some_images(2), "classes": classes, "model": CLIP_MODEL}

    def search_id(self):
        return "POST", "/search", {"index": IMAGE_INDEX, "id": self.rng.randint(0, self.items - 1), "k": 10}

    def search_image(self):
        return "POST", "/search", {"index": IMAGE_INDEX, "image": self.rng.choice(self.images), "k": 10}

    def search_text(self):
        return "POST", "/search", {"index": CLIP_INDEX, "text": f"a photo of a {self.rng.choice(['bag', 'shoe', 'dress'])}",
                                   "k": 10}

    def analogy(self):
        a, b, c = self.rng.sample(WORDS, 3)
        return "GET", f"/analogy?a={a}&b={b}&c={c}&k=5&model={WORDS_MODEL}", None

    def similar(self):
        return "GET", f"/similar?word={self.rng.choice(WORDS)}&k=10&model={WORDS_MODEL}", None

    def embed_text(self):
        return "POST", "/embed/text", {"texts": [f"a {self.rng.choice(WORDS)} on a table"] * self.rng.randint(1, 8),
                                       "model": CLIP_MODEL}


class Tally:
    def __init__(self):
        self.statuses: Counter[str] = Counter()
        self.by_kind: dict[str, Counter[str]] = {}
        self.latencies_s: dict[str, list[float]] = {}  # answered (2xx) requests by kind, from their scheduled send time

    def add(self, kind: str, status: str, latency_s: float | None) -> None:
        self.statuses[status] += 1
        self.by_kind.setdefault(kind, Counter())[status] += 1
        if latency_s is not None and status.startswith("2"):
            self.latencies_s.setdefault(kind, []).append(latency_s)

    def summary(self, offered_s: float, elapsed_s: float) -> dict:
        """Rates over the time requests were offered and the time until the last was answered."""
        every = [s for kind in self.latencies_s.values() for s in kind]
        lat = np.asarray(every) * 1000 if every else np.zeros(1)
        by_kind_ms = {kind: {"p50_ms": round(float(np.percentile(np.asarray(s) * 1000, 50)), 1),
                             "p99_ms": round(float(np.percentile(np.asarray(s) * 1000, 99)), 1)}
                      for kind, s in sorted(self.latencies_s.items())}
        total = sum(self.statuses.values())
        return {"requests": total, "offered_per_s": round(total / offered_s, 1),
                "served_per_s": round(sum(v for k, v in self.statuses.items() if k.startswith("2")) / elapsed_s, 1),
                "statuses": dict(sorted(self.statuses.items())),
                "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(self.by_kind.items())},
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "latency_by_kind": by_kind_ms}


async def send(client: PooledClient, tally: Tally, kind: str, raw: bytes, scheduled: float) -> None:
    tally.add(kind, await client.request(raw), time.perf_counter() - scheduled)


async def closed_loop(port: int, requests: list[tuple[str, bytes]], seconds: float) -> tuple[float, Tally]:
    tally, client = Tally(), PooledClient(port)
    deadline = time.perf_counter() + seconds
    draws = itertools.cycle(requests)

    async def one_client():
        while time.perf_counter() < deadline:
            await send(client, tally, *next(draws), time.perf_counter())

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    served = sum(v for k, v in tally.statuses.items() if k.startswith("2"))
    return served / elapsed, tally


async def open_loop(port: int, requests: list[tuple[str, bytes]], rate: float, seconds: float, job_every_s: float,
                    pid: int) -> dict:
    tally, health, rss, jobs = Tally(), [], [], []
    raw, draws = PooledClient(port), itertools.cycle(requests)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=120) as client:
        started = time.perf_counter()
        end = started + seconds

        async def watch():  # /healthz each second, RSS each five, a job each job_every_s
            next_job = started
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    await client.get("/healthz")
                    health.append(time.perf_counter() - t)
                except httpx.HTTPError:
                    health.append(float("inf"))
                if len(health) % 5 == 1:
                    rss.append((round(t - started, 1), round(rss_mb(pid), 1)))
                if t >= next_job:
                    next_job += job_every_s
                    r = await client.post("/jobs", json={"source": f"index:{IMAGE_INDEX}", "model": SIMCLR_MODEL,
                                                         "index": IMAGE_INDEX})
                    jobs.append(r.status_code)
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))

        watcher = asyncio.create_task(watch())
        pending: set[asyncio.Task] = set()
        dropped, next_at = 0, started
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if len(pending) >= MAX_OUTSTANDING:
                dropped += 1
            else:
                task = asyncio.create_task(send(raw, tally, *next(draws), next_at))
                pending.add(task)
                task.add_done_callback(pending.discard)
            next_at += random.expovariate(rate)
        await asyncio.gather(*pending)
        await watcher
        elapsed = time.perf_counter() - started
    job_states = []
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        job_states = [j["state"] for j in (await client.get("/jobs")).json()["jobs"]]
    health_ms = np.asarray(health) * 1000
    return {**tally.summary(seconds, elapsed), "dropped_by_client": dropped, "answered_within_s": round(elapsed, 1),
            "healthz_p50_ms": round(float(np.percentile(health_ms, 50)), 1),
            "healthz_p99_ms": round(float(np.percentile(health_ms, 99)), 1),
            "rss_mb_over_time": rss, "jobs_submitted": dict(Counter(map(str, jobs))),
            "job_states": dict(Counter(job_states))}


def run_one_job(base: str) -> float:
    """Re-embed the SimCLR index once, waiting for the job to end; its wall time."""
    started = time.perf_counter()
    job = httpx.post(f"{base}/jobs", json={"source": f"index:{IMAGE_INDEX}", "model": SIMCLR_MODEL, "index": IMAGE_INDEX},
                     timeout=30).json()
    while httpx.get(f"{base}/jobs/{job['id']}", timeout=30).json()["state"] in ("queued", "running"):
        time.sleep(1)
    return time.perf_counter() - started


def start_server(artifacts: Path, port: int, log: Path, data_roots: str = "") -> subprocess.Popen:
    """`embedserve serve` on the demo's artifacts, as a user starts it, once /readyz answers 200;
    its jobs may read images under `data_roots` (EMBEDSERVE_DATA_ROOTS)."""
    env = {**os.environ, "EMBEDSERVE_ARTIFACTS_DIR": str(artifacts), "EMBEDSERVE_PORT": str(port),
           "EMBEDSERVE_LOG_LEVEL": "warning", "EMBEDSERVE_HOST": HOST, "EMBEDSERVE_DATA_ROOTS": data_roots}
    process = subprocess.Popen([sys.executable, "-m", "embedserve", "serve"], env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)

    async def ready() -> None:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=2) as client:
            await wait_ready(client, process, timeout_s=300)

    try:
        asyncio.run(ready())
    except RuntimeError as e:
        stop(process)
        raise SystemExit(f"{e}:\n{log.read_text()[-2000:]}") from None
    return process


def write_smoke_artifacts(artifacts: Path) -> None:
    """Tiny stand-ins of the models and indexes the mix uses, under the demo's names: the random CNN
    of bench/serve_images.py, a CLIP trained two steps (bench/zero_shot.py's smoke configuration)
    exported fp32 only, random vectors of WORDS, and both indexes of the first SMOKE_IMAGES
    Fashion-MNIST test images (a folder under `artifacts`, which the jobs re-read)."""
    from bench.serve_images import fashion_mnist_folder, write_small_cnn_bundle
    from bench.zero_shot import SMOKE_CONFIG
    from export.clip import export_clip
    from export.word_vectors import write_word_vectors_bundle
    from index.build import build_image_index
    from training.methods.clip import ClipConfig, train_clip

    write_small_cnn_bundle(artifacts, SIMCLR_MODEL)
    checkpoint = artifacts / "checkpoints" / f"{CLIP_MODEL}.pt"
    train_clip(ClipConfig.quick(checkpoint_path=str(checkpoint), log_path=str(artifacts / "logs" / f"{CLIP_MODEL}.jsonl"),
                                **SMOKE_CONFIG))
    export_clip(checkpoint, artifacts, CLIP_MODEL, int8=False, fp16=False, query_bank_images=256)
    vectors = np.random.default_rng(0).normal(size=(len(WORDS), 16)).astype(np.float32)
    write_word_vectors_bundle(artifacts, WORDS_MODEL, WORDS, np.arange(len(WORDS), 0, -1) * 10, vectors)
    images = fashion_mnist_folder("test", SMOKE_IMAGES, artifacts / "test-images")
    for index, model in ((IMAGE_INDEX, SIMCLR_MODEL), (CLIP_INDEX, CLIP_MODEL)):
        build_image_index(artifacts, index, model, images, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="the demo's artifacts (jobs write index versions there)")
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--capacity-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="the soak's load before RSS is first read")
    parser.add_argument("--overload", type=float, default=2.0, help="offered rate as a multiple of the measured capacity")
    parser.add_argument("--job-every-s", type=float, default=120.0)
    parser.add_argument("--smoke", action="store_true",
                        help=SMOKE_HELP + "; tiny stand-ins of the demo's models in a temporary folder, "
                                          f"{SMOKE['duration_s']:g} s of soak, no verdict on memory")
    parser.add_argument("--out", type=Path, help="default: bench/results/soak.json")
    args = parser.parse_args()
    out = result_path(args.out, "soak", args.smoke)
    scratch = tempfile.TemporaryDirectory(prefix="embedserve-bench-soak-")
    if args.smoke:
        vars(args).update(SMOKE)
        args.artifacts = Path(scratch.name)
        write_smoke_artifacts(args.artifacts)
    for model in (SIMCLR_MODEL, CLIP_MODEL, WORDS_MODEL):
        try:
            open_bundle(args.artifacts, model)
        except BundleError:
            raise SystemExit(f"no model {model!r} under {args.artifacts}: run `embedserve demo --no-serve` first") from None

    port = free_port()
    log = args.artifacts / f"soak-server-{port}.log"
    process = start_server(args.artifacts.resolve(), port, log, data_roots=str(args.artifacts.resolve()) if args.smoke else "")
    base = f"http://{HOST}:{port}"
    try:
        requests = Mix(items=SMOKE_IMAGES if args.smoke else 10_000).prebuilt(4000, port)
        capacity, warm = asyncio.run(closed_loop(port, requests, args.capacity_s))
        warm_job_s = run_one_job(base)  # a job's memory (its source, its index) belongs in the baseline too
        rss_capacity = rss_mb(process.pid)
        # Then the soak's own load for a while, uncounted: what the server allocates for its steady
        # state under overload (queues full, bodies held) is the baseline a leak would grow from.
        asyncio.run(open_loop(port, requests, args.overload * capacity, args.warmup_s, args.job_every_s, process.pid))
        rss_start = rss_mb(process.pid)
        print(f"capacity: {capacity:.1f} requests/s with {CONCURRENCY} clients back to back "
              f"(p50 {warm.summary(args.capacity_s, args.capacity_s)['p50_ms']} ms); a warm-up job took {warm_job_s:.0f} s; "
              f"RSS {rss_capacity:.0f} MB after it, {rss_start:.0f} MB after {args.warmup_s:.0f} s of the soak's load", flush=True)
        soak = asyncio.run(open_loop(port, requests, args.overload * capacity, args.duration_s, args.job_every_s,
                                     process.pid))
        rss_end = rss_mb(process.pid)
        five_xx = sum(v for k, v in soak["statuses"].items() if k.startswith("5"))
    finally:
        exit_code = stop(process, timeout_s=120)
        scratch.cleanup()

    growth = 100 * (rss_end - rss_start) / rss_start
    result = {"bench": "soak", "date": utc_now(), "smoke": args.smoke,
              "machine": machine_info("onnxruntime", "faiss-cpu", "uvicorn"),
              "duration_s": args.duration_s, "capacity_per_s": round(capacity, 1), "overload": args.overload,
              **soak, "five_xx": five_xx, "rss_after_capacity_mb": round(rss_capacity, 1), "warmup_s": args.warmup_s,
              "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
              "rss_growth_pct": round(growth, 1), "server_exit_code_on_sigterm": exit_code}
    write_report(out, result)

    s = result
    print(f"\n| soak, {args.duration_s:.0f} s at {args.overload:g}× capacity | value |\n|---|---|")
    rows = [("capacity (closed loop, 16 clients)", f"{s['capacity_per_s']} req/s"),
            ("offered (open loop)", f"{s['offered_per_s']} req/s, {s['requests']:,} requests"),
            ("served (2xx)", f"{s['served_per_s']} req/s"),
            ("statuses", ", ".join(f"{k}: {v:,}" for k, v in s["statuses"].items())),
            ("5xx", f"{five_xx} (must be 0)"),
            ("p50 / p99 of answered", f"{s['p50_ms']} / {s['p99_ms']} ms"),
            ("/healthz p50 / p99", f"{s['healthz_p50_ms']} / {s['healthz_p99_ms']} ms"),
            ("jobs", f"submitted {s['jobs_submitted']}, ended {s['job_states']}"),
            ("server RSS after the warm-up load → end", f"{s['rss_start_mb']} → {s['rss_end_mb']} MB ({growth:+.1f} %, must be < 10 %)"),
            ("exit code on SIGTERM", str(exit_code))]
    for name, value in rows:
        print(f"| {name} | {value} |")
    if five_xx or (growth >= 10 and not args.smoke):  # seconds of load say nothing of memory
        raise SystemExit(1)


if __name__ == "__main__":
    main()
