"""Benchmark: a batch re-embedding job over the 70,000 Fashion-MNIST images beside a raw
onnxruntime loop on the same batches, and `/search` and `/embed/image` latency with and without a job running.

The job is `index.jobs.run_job`, what `embedserve jobs run` and `POST /jobs` run: it reads and
preprocesses each image, embeds it, writes Parquet shards and builds the index version at the
end; its images/s are counted over all of that. The same two jobs then run on a local Ray
(`run_job(..., ray=RayConfig("local"))`, Ray started once beforehand, not timed): Ray Data hands
each shard to an actor pool of model replicas and the driver writes the same shards and index;
its row counts the replicas' start-up (a worker process each, which imports onnxruntime, loads the
model and reads the source) in its images/s and reports it apart. The raw loop runs the same model's onnxruntime
session (same session options) on the same batches, preprocessed beforehand and not timed. Then
a server is started on 127.0.0.1 and driven at a fixed concurrency with searches by id and
embeddings of a small PNG, once idle and once while a job of the 60,000 training images runs in it. Prints one table and writes it,
with the machine and date, to bench/results/jobs.json.

    python bench/jobs.py                                           # the demo's first image model, else a small CNN stand-in
    python bench/jobs.py --artifacts artifacts --model simclr-fmnist
    python bench/jobs.py --ray-replicas 4                          # replicas of the Ray row (default: one per core)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.report import utc_now, write_report  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from index.jobs import JobSpec, JobStore, run_job  # noqa: E402
from index.vector_index import open_index  # noqa: E402
from index.jobs_ray import RayConfig  # noqa: E402
from runtime.bundle import Bundle, models_dir  # noqa: E402
from runtime.config import RuntimeConfig  # noqa: E402
from runtime.encoders.onnx_runtime import resolve_providers, session_options  # noqa: E402
from runtime.idx import load_fashion_mnist  # noqa: E402
from runtime.preprocessing import preprocess_batch  # noqa: E402
from runtime.sources import to_pil  # noqa: E402
from bench.http_client import HOST, free_port, latency_summary  # noqa: E402
from serve_images import find_image_bundle, sample_pngs, wait_ready, write_small_cnn_bundle  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "jobs.json"


def copy_model(bundle: Bundle, artifacts: Path) -> None:
    """The bundle (and its current pointer) into a scratch artifacts folder, so the bench writes nothing of the user's."""
    target = models_dir(artifacts) / bundle.manifest.name
    shutil.copytree(bundle.path, target / bundle.manifest.version)
    (target / "current").write_text(bundle.manifest.version + "\n")


def bench_raw(bundle: Bundle, batch_size: int) -> dict:
    """The model alone: every batch preprocessed first (untimed), then session.run over them all."""
    session = ort.InferenceSession(str(bundle.file("image_encoder")), sess_options=session_options(RuntimeConfig().intra_op_threads),
                                   providers=resolve_providers("auto"))
    name = bundle.manifest.onnx_io("image_encoder").inputs[0]
    images = np.concatenate([load_fashion_mnist(split=s)[0] for s in ("train", "test")])  # (70000, 28, 28)
    spec = bundle.manifest.preprocessing
    batches = [preprocess_batch([to_pil(im) for im in images[i:i + batch_size]], spec) for i in range(0, len(images), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        session.run(None, {name: batch})
    wall_s = time.perf_counter() - start
    return {"images": len(images), "wall_s": round(wall_s, 2), "images_per_s": round(len(images) / wall_s, 1)}


def bench_job(artifacts: Path, model: str, batch_size: int, ray: RayConfig | None = None, prefix: str = "fm") -> dict:
    """Both Fashion-MNIST splits as two jobs, timed end to end (index writes included); on Ray
    with `ray`. Each job's time is split in three: until its first shard is handed back (on Ray:
    the replicas start), from there to its last shard (the streaming rate), and the rest (the
    index version built, saved and made current)."""
    store, total, start, rows, phases = JobStore(artifacts), 0, time.perf_counter(), [], []
    for split in ("train", "test"):
        job = store.create(JobSpec(source=f"fashion-mnist:{split}", model=model, index=f"{prefix}-{split}", batch_size=batch_size))
        began, shards = time.perf_counter(), []

        def note_shard() -> bool:  # called by run_job after each shard is handed to its writer
            shards.append(time.perf_counter() - began)
            return False

        status = run_job(job.id, store, artifacts, should_stop=note_shard, ray=ray)
        if status.state != "succeeded":
            raise RuntimeError(f"job {split}: {status.state} {status.error}")
        wall_job_s = time.perf_counter() - began
        total += status.done
        phases.append({"first_shard_s": round(shards[0], 2), "streaming_s": round(shards[-1] - shards[0], 2),
                       "streaming_images_per_s": round((status.done - batch_size) / max(shards[-1] - shards[0], 1e-9), 1),
                       "index_s": round(wall_job_s - shards[-1], 2)})
        rows.append(status.to_dict())
    wall_s = time.perf_counter() - start
    return {"images": total, "wall_s": round(wall_s, 2), "images_per_s": round(total / wall_s, 1),
            "first_shard_s": [p["first_shard_s"] for p in phases], "phases": phases, "jobs": rows}


def bench_ray_job(artifacts: Path, model: str, batch_size: int, replicas: int) -> dict:
    """bench_job on a local Ray of one CPU per core, `replicas` model replicas; Ray's own start is timed apart."""
    import ray

    # Ray runs its workers at nice 15 by default; the local runner here runs at 0, and on a shared
    # machine nice 15 would measure the other tenants' load rather than Ray.
    os.environ.setdefault("RAY_worker_niceness", "0")
    began = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    start_s = time.perf_counter() - began
    try:
        result = bench_job(artifacts, model, batch_size, RayConfig(address="local", replicas=replicas), prefix="ray")
    finally:
        ray.shutdown()
    same = all(np.array_equal(open_index(artifacts, f"fm-{split}").ids(), open_index(artifacts, f"ray-{split}").ids())
               for split in ("train", "test"))
    probe = [open_index(artifacts, f"{p}-test") for p in ("fm", "ray")]
    return {**result, "replicas": replicas, "ray_start_s": round(start_s, 2), "ray_version": ray.__version__,
            "same_ids_as_local": same, "same_vectors_as_local": bool(np.array_equal(probe[0].vector(1234), probe[1].vector(1234)))}


async def drive(client: httpx.AsyncClient, requests: int, concurrency: int, until=None) -> dict:
    """`requests` requests from `concurrency` clients (or until `until()` is false), alternating a
    search by id and an embedding of a small PNG."""
    latencies, sent = {"search": [], "embed": []}, 0
    png = sample_pngs(1, 28)[0]

    async def worker() -> None:
        nonlocal sent
        while sent < requests and (until is None or until()):
            sent += 1
            began = time.perf_counter()
            if sent % 2:
                response = await client.post("/search", json={"index": "fm-test", "id": sent % 10_000, "k": 10})
            else:
                response = await client.post("/embed/image", files=[("files", ("a.png", png, "image/png"))])
            response.raise_for_status()
            latencies["search" if sent % 2 else "embed"].append(time.perf_counter() - began)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall_s = time.perf_counter() - start
    return {kind: latency_summary(values, len(values), wall_s, "images") for kind, values in latencies.items()}


async def bench_search(artifacts: Path, model: str, requests: int, concurrency: int, batch_size: int) -> dict:
    port = free_port()
    env = {**os.environ, "EMBEDSERVE_ARTIFACTS_DIR": str(artifacts)}
    command = [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", HOST, "--port", str(port),
               "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[1])
    try:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=60) as client:
            await wait_ready(client, server)
            await drive(client, 200, concurrency)  # warm-up
            idle = await drive(client, requests, concurrency)
            job = (await client.post("/jobs", json={"source": "fashion-mnist:train", "model": model, "index": "bg",
                                                    "batch_size": batch_size})).json()
            state = {"running": True}

            async def watch() -> None:
                while state["running"]:
                    status = (await client.get(f"/jobs/{job['id']}")).json()
                    state["running"] = status["state"] in ("queued", "running")
                    state["status"] = status
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)  # the job is under way
            busy = await drive(client, requests, concurrency, until=lambda: state["running"])
            still_running = state["running"]  # False: the job ended first, and fewer searches were timed
            watcher.cancel()
            return {"idle": idle, "with_job": busy, "job_still_running_at_the_end": still_running,
                    "job": state.get("status")}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                        help="where the model bundle is (default: ./artifacts; a small CNN stand-in when it holds no image model)")
    parser.add_argument("--model", help="an image-encoder bundle under --artifacts")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=2000, help="searches per measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ray-replicas", type=int, default=os.cpu_count(), help="model replicas of the Ray row (default: one per core)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    load_at_start = list(os.getloadavg())  # machine_info's is taken at the end
    with tempfile.TemporaryDirectory(prefix="embedserve-bench-jobs-") as scratch:
        artifacts = Path(scratch)
        bundle = find_image_bundle(args.artifacts, args.model) if (args.artifacts / "models").is_dir() else None
        bundle = bundle or write_small_cnn_bundle(Path(scratch) / "source")
        copy_model(bundle, artifacts)
        model = bundle.manifest.name
        raw = bench_raw(bundle, args.batch_size)
        job = bench_job(artifacts, model, args.batch_size)
        on_ray = bench_ray_job(artifacts, model, args.batch_size, args.ray_replicas)
        search = asyncio.run(bench_search(artifacts, model, args.requests, args.concurrency, args.batch_size))

    ratio = job["images_per_s"] / raw["images_per_s"]
    ray_ratio = on_ray["images_per_s"] / raw["images_per_s"]
    idle, busy = search["idle"], search["with_job"]
    p99 = {kind: busy[kind]["p99_ms"] / idle[kind]["p99_ms"] for kind in ("search", "embed")}
    print(f"\nmodel {model} {bundle.manifest.version}, batch {args.batch_size}, 70,000 Fashion-MNIST images; "
          f"requests at concurrency {args.concurrency}")
    print("| measurement | images/s | p50 ms | p99 ms | ratio |\n| --- | ---: | ---: | ---: | ---: |")
    print(f"| raw onnxruntime loop | {raw['images_per_s']:,.0f} | | | 1.00 |")
    print(f"| re-embedding job (read, preprocess, embed, shards, index) | {job['images_per_s']:,.0f} | | | {ratio:.2f} |")
    print(f"| the same job on a local Ray ({on_ray['replicas']} replicas; first shard after "
          f"{' s, '.join(str(s) for s in on_ray['first_shard_s'])} s) | {on_ray['images_per_s']:,.0f} | | | {ray_ratio:.2f} |")
    for name, result in (("job", job), ("job on Ray", on_ray)):
        train = result["phases"][0]  # the 60,000-image job: past the start, at what rate shards stream
        print(f"| {name}, train split from its first shard to its last | {train['streaming_images_per_s']:,.0f} | | | "
              f"{train['streaming_images_per_s'] / raw['images_per_s']:.2f} |")
    for kind, route in (("search", "/search"), ("embed", "/embed/image")):
        print(f"| {route}, idle | | {idle[kind]['p50_ms']} | {idle[kind]['p99_ms']} | 1.00 |")
        print(f"| {route}, job running | | {busy[kind]['p50_ms']} | {busy[kind]['p99_ms']} | {p99[kind]:.2f} (p99) |")
    result = {"benchmark": "jobs", "date": utc_now(),
              "machine": machine_info("onnxruntime", "faiss-cpu", "pyarrow", "ray"), "load_average_at_start": load_at_start, "model": f"{model} {bundle.manifest.version}",
              "batch_size": args.batch_size, "raw_onnxruntime": raw, "job": job, "ray_job": on_ray, "search": search,
              "job_over_raw": round(ratio, 3), "ray_job_over_raw": round(ray_ratio, 3),
              "p99_with_job_over_idle": {kind: round(r, 3) for kind, r in p99.items()}}
    write_report(args.out, result)


if __name__ == "__main__":
    main()
