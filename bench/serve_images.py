"""Benchmark: `POST /embed/image` through the gateway, batching on and off, on Triton, against raw onnxruntime.

Starts servers on 127.0.0.1 — one process with EMBEDSERVE_BATCHING=true, one with false, a
batching one with --workers processes, and a batching one whose model runs on a real Triton
server (EMBEDSERVE_TRITON_URL; the tritonserver that nvidia-pytriton carries, started as the
tests start it, with the repository `embedserve export --triton --triton-backend python` writes)
— drives each at concurrency 1, 8 and 32 (one image per request, from a light raw-socket client
that shares the machine), runs the same model's onnxruntime session in-process on preprocessed
batches of 1, 8 and 32, prints one table and writes it, with the machine and date, to
bench/results/serve_images.json.

    python bench/serve_images.py                                  # an image encoder under artifacts/, else a small CNN bundle
    python bench/serve_images.py --artifacts artifacts --model simclr-fmnist --requests 512
    python bench/serve_images.py --no-triton                      # without the Triton row
    python bench/serve_images.py --smoke                          # the stand-in CNN, concurrency 1, a few requests: seconds
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from bench.http_client import (HOST, KeepAliveConnections, free_port, http_request, latency_summary, start_gateway,  # noqa: E402
                               stop, wait_ready)
from embedserve.machine import machine_info  # noqa: E402
from runtime.bundle import Bundle, Manifest, OnnxIO, iter_current_bundles, open_bundle, write_bundle  # noqa: E402
from runtime.encoders.onnx_runtime import resolve_providers, session_options  # noqa: E402
from runtime.preprocessing import PreprocessingSpec, decode_image, preprocess_batch  # noqa: E402
from export.triton import write_triton_repository  # noqa: E402
from serving.settings import Settings  # noqa: E402
from tests.triton_server import KIT_DIR, PYTRITON, TritonServer  # noqa: E402
from runtime.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT, load_fashion_mnist  # noqa: E402

CONCURRENCY = (1, 8, 32)
SMOKE_CONCURRENCY = (1,)
TRITON_MODE = "batched, on Triton"


def write_small_cnn_bundle(artifacts: Path, name: str = "bench-cnn") -> Bundle:
    """A stand-in image encoder for when no exported one exists: (B,1,28,28) → 2 convs → GAP → 128-d."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.3, (32, 1, 3, 3)), "w2": rng.normal(0, 0.1, (64, 32, 3, 3)),
        "w3": rng.normal(0, 0.1, (64, 64, 3, 3)), "proj": rng.normal(0, 0.1, (64, 128)),
    }
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes, "bench_cnn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 128])],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = PreprocessingSpec(mode="L", resize=28, crop=28, mean=(0.286,), std=(0.353,))
    manifest = Manifest(name=name, kind="image-encoder", method="simclr", dim=128, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=spec,
                        onnx={"image_encoder": OnnxIO(("images",), "embeddings")},
                        extra={"note": "random-weight stand-in written by bench/serve_images.py"})
    return write_bundle(artifacts, manifest, lambda folder: save(model, str(folder / "image_encoder.onnx")))


def find_image_bundle(artifacts: Path, name: str | None) -> Bundle | None:
    if name:
        return open_bundle(artifacts, name)
    return next((b for b in iter_current_bundles(artifacts) if b.manifest.kind == "image-encoder"), None)


def sample_pngs(count: int, size: int) -> list[bytes]:
    """`count` PNG files: Fashion-MNIST test images when installed, else noise, resized to `size`."""
    if DEFAULT_FASHION_MNIST_ROOT.is_dir():
        pixels = load_fashion_mnist(DEFAULT_FASHION_MNIST_ROOT, "test")[0][:count]
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    out = []
    for p in pixels:
        buffer = io.BytesIO()
        Image.fromarray(p, "L").resize((size, size), Image.Resampling.BILINEAR).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def fashion_mnist_folder(split: str, count: int, folder: Path) -> Path:
    """The first `count` images of a Fashion-MNIST split as PNG files in `folder` (made), named in
    order so that a folder source reads them at the positions they have in the split: a source of a
    few hundred images for a smoke run, which jobs and index builds read as they read a split."""
    folder.mkdir(parents=True)
    for i, pixels in enumerate(load_fashion_mnist(DEFAULT_FASHION_MNIST_ROOT, split)[0][:count]):
        Image.fromarray(pixels, "L").save(folder / f"{i:05d}.png")
    return folder


def start_server(artifacts: Path, model: str, batching: bool, workers: int, port: int, max_batch_size: int,
                 max_wait_ms: float, triton_url: str | None = None) -> subprocess.Popen:
    """The gateway serving `model` from `artifacts` as this bench runs it (fp32, batching on or off)."""
    env = {**os.environ, "EMBEDSERVE_ARTIFACTS_DIR": str(artifacts), "EMBEDSERVE_DEFAULT_IMAGE_MODEL": model,
           "EMBEDSERVE_BATCHING": str(batching).lower(), "EMBEDSERVE_MAX_BATCH_SIZE": str(max_batch_size),
           "EMBEDSERVE_MAX_WAIT_MS": str(max_wait_ms),
           "EMBEDSERVE_PRECISION": "fp32"}  # the variant Triton's repository holds, and the raw session's
    if triton_url:
        env["EMBEDSERVE_TRITON_URL"] = triton_url
    return start_gateway(env, port, workers)


def multipart_request(png: bytes, port: int) -> bytes:
    """One whole `POST /embed/image` (HTTP/1.1, keep-alive, multipart with one file), built once per image."""
    boundary = b"embedservebenchboundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--" + boundary + b"--\r\n")
    return http_request("POST", "/embed/image", port, body, f"multipart/form-data; boundary={boundary.decode()}")


async def drive(port: int, requests_bytes: list[bytes], concurrency: int, requests: int, client: httpx.AsyncClient,
                server_pids: tuple[int, ...], count_batches: bool = True) -> dict:
    """`requests` single-image POSTs, `concurrency` in flight at a time (one keep-alive connection
    each); every answer must be 200."""
    async with KeepAliveConnections(port, concurrency) as connections:
        await connections.warm_up(requests_bytes[:1])
        rows_before, calls_before = await batch_counts(client) if count_batches else (0.0, 0.0)
        run = await connections.drive(requests_bytes, requests, server_pids)
        rows_after, calls_after = await batch_counts(client) if count_batches else (0.0, 0.0)
    # several workers: /metrics answers from one of them, so their batch sizes cannot be summed here
    mean_batch = round((rows_after - rows_before) / max(1.0, calls_after - calls_before), 1) if count_batches else None
    # client_cpu, server_cpu: cores this (client) process and the server's processes (the gateway, and Triton's) used meanwhile
    return latency_summary(run.latencies_s, requests, run.wall_s, "images") | {"mean_batch": mean_batch} | run.cores()


async def batch_counts(client: httpx.AsyncClient) -> tuple[float, float]:
    """Rows and model calls so far, from the server's embedserve_batch_size histogram."""
    text = (await client.get("/metrics")).text
    total = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in total:
            if line.startswith(f"embedserve_batch_size_{part}{{"):
                total[part] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]


def start_triton(bundle: Bundle, scratch: Path, max_batch_size: int) -> TritonServer:
    """A real Triton server holding `bundle`'s ONNX model, run by onnxruntime in the Python backend
    with the gateway's session threads; started as the tests start it (tests/triton_server.py,
    which prepares the server and its numpy < 2 environment once)."""
    repository = scratch / "triton"
    # no queueing delay: the gateway's batcher already sends whole batches (its max_wait_ms is 0 too)
    write_triton_repository(bundle, repository, max_batch_size=max_batch_size, max_queue_delay_us=0,
                            onnx_backend="python", intra_op_threads=Settings().onnx_intra_op_threads)
    workdir = scratch / "triton-run"
    workdir.mkdir()
    return TritonServer(repository, [bundle.manifest.name], workdir)


async def bench_gateway(artifacts: Path, model: str, pngs: list[bytes], requests: int, args,
                        triton: TritonServer | None = None) -> dict:
    """Each server in turn at each of `args.concurrency`."""
    results = {}
    servers = [("batched", True, 1, None), ("unbatched", False, 1, None)]
    if args.workers > 1:
        servers.append((f"batched, {args.workers} workers", True, args.workers, None))
    if triton is not None:
        servers.append((TRITON_MODE, True, 1, triton))
    for mode, batching, workers, triton_server in servers:
        port = free_port()
        server = start_server(artifacts, model, batching, workers, port, args.max_batch_size, args.max_wait_ms,
                              triton_server.url if triton_server else None)
        server_pids = (server.pid, triton_server.process.pid) if triton_server else (server.pid,)
        try:
            limits = httpx.Limits(max_connections=max(args.concurrency), max_keepalive_connections=max(args.concurrency))
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=60.0, limits=limits) as client:
                # several fresh connections in a row: with several workers, each may land on another one
                await wait_ready(client, server, model=model, in_a_row=8 * workers)
                requests_bytes = [multipart_request(png, port) for png in pngs]
                for c in args.concurrency:
                    results[(mode, c)] = await drive(port, requests_bytes, c, requests, client, server_pids, count_batches=workers == 1)
                    print(f"  gateway {mode} c={c}: {results[(mode, c)]}", flush=True)
        finally:
            stop(server, timeout_s=15)
    return results


def bench_raw(bundle: Bundle, pngs: list[bytes], requests: int, concurrency: tuple[int, ...] = CONCURRENCY) -> dict:
    """The model alone: onnxruntime in this process on already-preprocessed batches of c images, c in `concurrency`."""
    session = ort.InferenceSession(str(bundle.file("image_encoder")), sess_options=session_options(Settings().onnx_intra_op_threads),
                                   providers=resolve_providers("auto"))
    input_name = session.get_inputs()[0].name
    images = [decode_image(p) for p in pngs]
    results = {}
    for c in concurrency:
        batch = preprocess_batch([images[i % len(images)] for i in range(c)], bundle.manifest.preprocessing)  # (c, C, H, W)
        session.run(None, {input_name: batch})  # warm-up
        calls = max(1, requests // c)
        latencies = []
        start = time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            session.run(None, {input_name: batch})
            latencies.append(time.perf_counter() - t)
        results[("raw onnxruntime", c)] = (latency_summary(latencies, calls * c, time.perf_counter() - start, "images")
                                           | {"mean_batch": float(c)})
        print(f"  raw onnxruntime batch={c}: {results[('raw onnxruntime', c)]}", flush=True)
    return results


def print_table(results: dict, model_line: str) -> None:
    print(f"\n{model_line}")
    print(f"{'mode':<22}{'c':>4}{'images/s':>11}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}{'client cpu':>12}{'server cpu':>12}")
    for (mode, c), r in results.items():
        cpu = [f"{r[k]:.2f}" if r.get(k) is not None else "-" for k in ("client_cpu", "server_cpu")]
        batch = "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        print(f"{mode:<22}{c:>4}{r['images_per_s']:>11.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{batch:>12}{cpu[0]:>12}{cpu[1]:>12}")
    print("c: concurrent requests of one image each (raw onnxruntime: batches of c preprocessed images)")
    print("client cpu, server cpu: cores the bench's own client and the server process used meanwhile (they share the machine);")
    print(f"  for '{TRITON_MODE}' the server is the gateway and the Triton server with its Python-backend stub together")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="folder holding models/")
    parser.add_argument("--model", help="image encoder to serve; default: the first under --artifacts, else a stand-in CNN")
    parser.add_argument("--requests", type=int, default=256, help="requests per (mode, concurrency) cell")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=Settings().max_wait_ms)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server processes of the extra batched server (default: one per core; 1: no extra server)")
    parser.add_argument("--no-triton", action="store_true", help="leave out the row whose model runs on a Triton server")
    parser.add_argument("--smoke", action="store_true",
                        help=SMOKE_HELP + "; concurrency 1, one worker, Triton only when its kit is prepared")
    parser.add_argument("--out", type=Path, help="default: bench/results/serve_images.json")
    args = parser.parse_args()
    args.concurrency = SMOKE_CONCURRENCY if args.smoke else CONCURRENCY
    not_measured = {}
    if args.smoke:
        args.requests, args.workers = 16, 1
        if not args.no_triton and not (KIT_DIR / "bin" / "tritonserver").is_file():
            args.no_triton = True  # preparing Triton's kit downloads and installs packages: minutes, not a smoke run's
            not_measured[TRITON_MODE] = f"Triton's kit is not prepared at {KIT_DIR} (the Triton tests prepare it)"
    elif args.no_triton:
        not_measured[TRITON_MODE] = "--no-triton"
    out = result_path(args.out, "serve_images", args.smoke)

    with tempfile.TemporaryDirectory(prefix="serve-images-bench-") as scratch:
        artifacts = args.artifacts.resolve()
        # a smoke run serves the stand-in, whatever the user's artifacts hold
        bundle = find_image_bundle(artifacts, args.model) if artifacts.is_dir() and not args.smoke else None
        stand_in = bundle is None
        if stand_in:
            artifacts = Path(scratch)
            bundle = write_small_cnn_bundle(artifacts)
        m = bundle.manifest
        model_line = f"model {m.name} {m.version} ({m.method}, dim {m.dim}, input {m.preprocessing.crop}px) from {artifacts}"
        print(model_line, flush=True)
        pngs = sample_pngs(64, m.preprocessing.crop)
        triton = None if args.no_triton else start_triton(bundle, Path(scratch), args.max_batch_size)
        try:
            results = asyncio.run(bench_gateway(artifacts, m.name, pngs, args.requests, args, triton))
        finally:
            if triton is not None:
                triton.stop()
        results |= bench_raw(bundle, pngs, args.requests, args.concurrency)

    top = max(args.concurrency)
    ratios = {
        f"batched/unbatched images/s at c={top}": results[("batched", top)]["images_per_s"] / results[("unbatched", top)]["images_per_s"],
        f"gateway (batched)/raw onnxruntime images/s at c={top}": results[("batched", top)]["images_per_s"] / results[("raw onnxruntime", top)]["images_per_s"],
        "gateway/raw onnxruntime images/s at c=1": results[("batched", 1)]["images_per_s"] / results[("raw onnxruntime", 1)]["images_per_s"],
    }
    if args.workers > 1:
        workers_mode = f"batched, {args.workers} workers"
        ratios[f"gateway ({workers_mode})/raw onnxruntime images/s at c={top}"] = \
            results[(workers_mode, top)]["images_per_s"] / results[("raw onnxruntime", top)]["images_per_s"]
    if not args.no_triton:
        for c in (1, top):
            ratios[f"gateway on Triton/in process (batched) images/s at c={c}"] = \
                results[(TRITON_MODE, c)]["images_per_s"] / results[("batched", c)]["images_per_s"]
        ratios["gateway on Triton/in process (batched) p50 at c=1"] = \
            results[(TRITON_MODE, 1)]["p50_ms"] / results[("batched", 1)]["p50_ms"]
    print_table(results, model_line)
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")

    for name, why in not_measured.items():
        print(f"not measured: {name}: {why}")

    write_report(out, {
        "benchmark": "serve_images",
        "date": utc_now(),
        "smoke": args.smoke,
        "machine": machine_info("onnxruntime", "uvicorn", "uvloop", "httptools", "httpx", "tritonclient"),
        "model": {"name": m.name, "version": m.version, "method": m.method, "dim": m.dim, "stand_in": stand_in},
        "settings": {"requests_per_cell": args.requests, "max_batch_size": args.max_batch_size,
                     "max_wait_ms": args.max_wait_ms, "images_per_request": 1, "workers": args.workers,
                     "precision": "fp32",
                     "onnx_intra_op_threads": Settings().onnx_intra_op_threads,  # the server's, Triton's and the raw session's
                     "batches_in_flight": Settings().batches_in_flight,  # the in-process servers' (the raw session runs one call at a time)
                     "triton": None if args.no_triton else {
                         "server": f"the tritonserver of {PYTRITON} (a CPU build without the onnxruntime backend)",
                         "model": "the bundle's ONNX file run by onnxruntime in Triton's Python backend (export --triton-backend python)",
                         "max_queue_delay_us": 0, "gateway_to_triton": "HTTP/KServe v2 on loopback, binary tensors"},
                     "client": "raw asyncio streams in the bench process, prebuilt multipart requests, one keep-alive connection per concurrent request; client_cpu and server_cpu are the cores each process used"},
        "results": [{"mode": mode, "concurrency": c, **r} for (mode, c), r in results.items()],
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "not_measured": not_measured,
    })


if __name__ == "__main__":
    main()
