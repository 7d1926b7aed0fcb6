"""Benchmark: a batch re-embedding job over the 70,000 Fashion-MNIST images beside a raw
onnxruntime loop on the same batches, and `/search` and `/embed/image` latency with and without a job running.

The job is `jobs.run.run_job`, what `embedserve jobs run` and `POST /jobs` run: it reads and
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
    python bench/jobs.py --ray-replicas 0                          # no Ray row (Ray's start takes seconds)
    python bench/jobs.py --smoke                                   # a few hundred images as folders of PNGs, no Ray: seconds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

# Run as a script from anywhere: the repository on the path, and this script's folder off it, since
# its name would hide the jobs package, here and on the Ray workers (Ray gives them the driver's
# script folder when the driver's path holds it).
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.http_client import HOST, free_port, latency_summary, start_gateway, stop, wait_ready  # noqa: E402
from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from bench.serve_images import fashion_mnist_folder, find_image_bundle, sample_pngs, write_small_cnn_bundle  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from index.vector_index import open_index  # noqa: E402
from jobs.ray_runner import RayConfig  # noqa: E402
from jobs.run import run_job  # noqa: E402
from jobs.store import JobSpec, JobStore  # noqa: E402
from runtime.bundle import Bundle, models_dir  # noqa: E402
from runtime.config import RuntimeConfig  # noqa: E402
from runtime.encoders.onnx_runtime import resolve_providers, session_options  # noqa: E402
from runtime.fashion_mnist import load_fashion_mnist  # noqa: E402
from runtime.preprocessing import preprocess_batch  # noqa: E402
from runtime.sources import to_pil  # noqa: E402

SPLITS = ("train", "test")  # two jobs; the server's background job re-embeds the first
SMOKE_IMAGES = {"train": 256, "test": 128}  # --smoke: the first images of each split, as folders of PNGs


def copy_model(bundle: Bundle, artifacts: Path) -> None:
    """The bundle (and its current pointer) into a scratch artifacts folder, so the bench writes nothing of the user's."""
    target = models_dir(artifacts) / bundle.manifest.name
    shutil.copytree(bundle.path, target / bundle.manifest.version)
    (target / "current").write_text(bundle.manifest.version + "\n")


def job_sources(scratch: Path, smoke: bool) -> dict[str, tuple[str, np.ndarray]]:
    """Per split, the source its job reads and the same images as arrays (N, 28, 28) for the raw
    loop: Fashion-MNIST's splits, or with `smoke` their first SMOKE_IMAGES written as folders of
    PNGs under `scratch` (a job reads a folder as it reads any other source)."""
    sources = {}
    for split in SPLITS:
        images = load_fashion_mnist(split=split)[0]
        if smoke:
            images = images[:SMOKE_IMAGES[split]]
            sources[split] = (str(fashion_mnist_folder(split, len(images), scratch / "images" / split)), images)
        else:
            sources[split] = (f"fashion-mnist:{split}", images)
    return sources


def bench_raw(bundle: Bundle, batch_size: int, images: np.ndarray) -> dict:
    """The model alone on `images` (N, 28, 28): every batch preprocessed first (untimed), then session.run over them all."""
    session = ort.InferenceSession(str(bundle.file("image_encoder")), sess_options=session_options(RuntimeConfig().intra_op_threads),
                                   providers=resolve_providers("auto"))
    name = bundle.manifest.onnx_io("image_encoder").inputs[0]
    spec = bundle.manifest.preprocessing
    batches = [preprocess_batch([to_pil(im) for im in images[i:i + batch_size]], spec) for i in range(0, len(images), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        session.run(None, {name: batch})
    wall_s = time.perf_counter() - start
    return {"images": len(images), "wall_s": round(wall_s, 2), "images_per_s": round(len(images) / wall_s, 1)}


def bench_job(artifacts: Path, model: str, batch_size: int, sources: dict[str, str], ray: RayConfig | None = None,
              prefix: str = "fm") -> dict:
    """Both splits' `sources` as two jobs, timed end to end (index writes included); on Ray
    with `ray`. Each job's time is split in three: until its first shard is handed back (on Ray:
    the replicas start), from there to its last shard (the streaming rate), and the rest (the
    index version built, saved and made current)."""
    store, total, start, rows, phases = JobStore(artifacts), 0, time.perf_counter(), [], []
    for split in SPLITS:
        job = store.create(JobSpec(source=sources[split], model=model, index=f"{prefix}-{split}", batch_size=batch_size))
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


def bench_ray_job(artifacts: Path, model: str, batch_size: int, sources: dict[str, str], replicas: int) -> dict:
    """bench_job on a local Ray of one CPU per core, `replicas` model replicas; Ray's own start is timed apart."""
    import ray

    # Ray runs its workers at nice 15 by default; the local runner here runs at 0, and on a shared
    # machine nice 15 would measure the other tenants' load rather than Ray.
    os.environ.setdefault("RAY_worker_niceness", "0")
    began = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    start_s = time.perf_counter() - began
    try:
        result = bench_job(artifacts, model, batch_size, sources, RayConfig(address="local", replicas=replicas), prefix="ray")
    finally:
        ray.shutdown()
    same = all(np.array_equal(open_index(artifacts, f"fm-{split}").ids(), open_index(artifacts, f"ray-{split}").ids())
               for split in SPLITS)
    probe = [open_index(artifacts, f"{p}-test") for p in ("fm", "ray")]
    item = min(1234, len(probe[0].ids()) - 1)
    return {**result, "replicas": replicas, "ray_start_s": round(start_s, 2), "ray_version": ray.__version__,
            "same_ids_as_local": same, "same_vectors_as_local": bool(np.array_equal(probe[0].vector(item), probe[1].vector(item)))}


async def drive(client: httpx.AsyncClient, requests: int, concurrency: int, items: int, until=None) -> dict:
    """`requests` requests from `concurrency` clients (or until `until()` is false, each client's
    first two requests sent regardless, so that a job quicker than expected still leaves a figure
    of each kind), alternating a search by id (among the `items` of index fm-test) and an
    embedding of a small PNG."""
    latencies, sent = {"search": [], "embed": []}, 0
    png = sample_pngs(1, 28)[0]

    async def worker() -> None:
        nonlocal sent
        regardless = 2  # one search and one embedding, whatever until() says
        while sent < requests and (until is None or until() or regardless > 0):
            regardless -= 1
            sent += 1
            began = time.perf_counter()
            if sent % 2:
                response = await client.post("/search", json={"index": "fm-test", "id": sent % items, "k": 10})
            else:
                response = await client.post("/embed/image", files=[("files", ("a.png", png, "image/png"))])
            response.raise_for_status()
            latencies["search" if sent % 2 else "embed"].append(time.perf_counter() - began)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall_s = time.perf_counter() - start
    return {kind: latency_summary(values, len(values), wall_s, "images") for kind, values in latencies.items()}


async def bench_search(artifacts: Path, model: str, requests: int, concurrency: int, batch_size: int, background_source: str,
                       items: int, warm_up: int = 200) -> dict:
    """The server idle, then while a job of `background_source` runs in it; `items` in index fm-test."""
    port = free_port()
    # data roots: --smoke's folders of images lie in the scratch artifacts folder (the splits are always readable)
    env = {**os.environ, "EMBEDSERVE_ARTIFACTS_DIR": str(artifacts), "EMBEDSERVE_DATA_ROOTS": str(artifacts)}
    server = start_gateway(env, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=60) as client:
            await wait_ready(client, server, model=model)
            await drive(client, warm_up, concurrency, items)
            idle = await drive(client, requests, concurrency, items)
            answer = await client.post("/jobs", json={"source": background_source, "model": model, "index": "bg",
                                                      "batch_size": batch_size})
            answer.raise_for_status()
            job = answer.json()
            state = {"running": True}

            async def watch() -> None:
                while state["running"]:
                    status = (await client.get(f"/jobs/{job['id']}")).json()
                    state["running"] = status["state"] in ("queued", "running")
                    state["status"] = status
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)  # the job is under way
            busy = await drive(client, requests, concurrency, items, until=lambda: state["running"])
            still_running = state["running"]  # False: the job ended first, and fewer searches were timed
            watcher.cancel()
            return {"idle": idle, "with_job": busy, "job_still_running_at_the_end": still_running,
                    "job": state.get("status")}
    finally:
        stop(server, timeout_s=30)


def table_rows(raw: dict, job: dict, on_ray: dict | None, search: dict) -> list[dict]:
    """The printed table, row by row: images/s with their ratio to the raw loop, and the
    requests' p50 and p99 with the p99's ratio to the idle server's."""
    rows = [{"measurement": "raw onnxruntime loop", "images_per_s": raw["images_per_s"], "ratio": 1.0},
            {"measurement": "re-embedding job (read, preprocess, embed, shards, index)", "images_per_s": job["images_per_s"]}]
    if on_ray is not None:
        rows.append({"measurement": f"the same job on a local Ray ({on_ray['replicas']} replicas; first shard after "
                                    f"{' s, '.join(str(s) for s in on_ray['first_shard_s'])} s)",
                     "images_per_s": on_ray["images_per_s"]})
    for name, result in (("job", job), ("job on Ray", on_ray)):
        if result is not None:
            train = result["phases"][0]  # the training split's job: past the start, at what rate shards stream
            rows.append({"measurement": f"{name}, train split from its first shard to its last",
                         "images_per_s": train["streaming_images_per_s"]})
    for row in rows:
        row["ratio"] = round(row["images_per_s"] / raw["images_per_s"], 3)
    idle, busy = search["idle"], search["with_job"]
    for kind, route in (("search", "/search"), ("embed", "/embed/image")):
        rows.append({"measurement": f"{route}, idle", "p50_ms": idle[kind]["p50_ms"], "p99_ms": idle[kind]["p99_ms"], "ratio": 1.0})
        rows.append({"measurement": f"{route}, job running", "p50_ms": busy[kind]["p50_ms"], "p99_ms": busy[kind]["p99_ms"],
                     "ratio": round(busy[kind]["p99_ms"] / idle[kind]["p99_ms"], 3)})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| measurement | images/s | p50 ms | p99 ms | ratio |\n| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        rate = f"{row['images_per_s']:,.0f}" if "images_per_s" in row else ""
        ratio = f"{row['ratio']:.2f}" + (" (p99)" if "p99_ms" in row and row["ratio"] != 1.0 else "")
        print(f"| {row['measurement']} | {rate} | {row.get('p50_ms', '')} | {row.get('p99_ms', '')} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                        help="where the model bundle is (default: ./artifacts; a small CNN stand-in when it holds no image model)")
    parser.add_argument("--model", help="an image-encoder bundle under --artifacts")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=2000, help="searches per measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ray-replicas", type=int,
                        help="model replicas of the Ray row; 0: no Ray row (default: one per core; with --smoke, 0)")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--out", type=Path, help="default: bench/results/jobs.json")
    args = parser.parse_args()
    if args.ray_replicas is None:
        args.ray_replicas = 0 if args.smoke else os.cpu_count()
    if args.ray_replicas < 0:
        parser.error(f"--ray-replicas must be 0 (no Ray row) or more, not {args.ray_replicas}")
    if args.smoke:  # a few shards per job, a few requests
        args.batch_size, args.requests = 64, 20
    out = result_path(args.out, "jobs", args.smoke)

    load_at_start = list(os.getloadavg())  # machine_info's is taken at the end
    with tempfile.TemporaryDirectory(prefix="embedserve-bench-jobs-") as scratch:
        artifacts = Path(scratch)
        # a smoke run embeds with the stand-in, whatever the user's artifacts hold
        bundle = find_image_bundle(args.artifacts, args.model) if (args.artifacts / "models").is_dir() and not args.smoke else None
        bundle = bundle or write_small_cnn_bundle(Path(scratch) / "source")
        copy_model(bundle, artifacts)
        model = bundle.manifest.name
        data = job_sources(artifacts, args.smoke)
        sources = {split: source for split, (source, _) in data.items()}
        images = {split: len(pixels) for split, (_, pixels) in data.items()}
        raw = bench_raw(bundle, args.batch_size, np.concatenate([pixels for _, pixels in data.values()]))
        job = bench_job(artifacts, model, args.batch_size, sources)
        on_ray = bench_ray_job(artifacts, model, args.batch_size, sources, args.ray_replicas) if args.ray_replicas else None
        search = asyncio.run(bench_search(artifacts, model, args.requests, args.concurrency, args.batch_size, sources["train"],
                                          images["test"], warm_up=10 if args.smoke else 200))

    rows = table_rows(raw, job, on_ray, search)
    print(f"\nmodel {model} {bundle.manifest.version}, batch {args.batch_size}, {sum(images.values()):,} Fashion-MNIST images "
          f"({' + '.join(f'{n:,} {split}' for split, n in images.items())}); requests at concurrency {args.concurrency}")
    print_table(rows)
    if on_ray is None:
        print("no Ray row (--ray-replicas 0)")
    result = {"benchmark": "jobs", "date": utc_now(), "smoke": args.smoke,
              "machine": machine_info("onnxruntime", "faiss-cpu", "pyarrow", "ray"), "load_average_at_start": load_at_start,
              "model": f"{model} {bundle.manifest.version}", "batch_size": args.batch_size, "images": images,
              "concurrency": args.concurrency, "rows": rows, "raw_onnxruntime": raw, "job": job, "search": search,
              "job_over_raw": round(job["images_per_s"] / raw["images_per_s"], 3),
              "p99_with_job_over_idle": {kind: round(search["with_job"][kind]["p99_ms"] / search["idle"][kind]["p99_ms"], 3)
                                         for kind in ("search", "embed")}}
    if on_ray is not None:
        result |= {"ray_job": on_ray, "ray_job_over_raw": round(on_ray["images_per_s"] / raw["images_per_s"], 3)}
    else:
        result["not_measured"] = {"ray_job": "--ray-replicas 0"}
    write_report(out, result)


if __name__ == "__main__":
    main()
