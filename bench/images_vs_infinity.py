"""Benchmark: a ViT-B/32-shaped CLIP on photos and texts, embedserve against infinity, on the same CPU.

The bench writes one random-weight Hugging Face `CLIPModel` folder with transformers (CLIPConfig's
defaults are ViT-B/32's shapes; the tokenizer is CLIP's own BPE, from the vocabulary the
open-clip-torch wheel ships; a CLIPImageProcessor config), turns it into a bundle with
`embedserve import clip`, and serves it with embedserve at its defaults (precision auto: the
import's int8 copy on a CPU where it passed) and at fp32; infinity (`infinity-emb[server,torch,vision]`
in its own venv under the scratch folder, torch engine, at float32 and at int8) serves the folder itself. One server runs
at a time; the same client (bench/http_client.py: prebuilt requests, one keep-alive connection per
concurrent request) sends OpenAI-style embedding requests whose inputs are photos as base64 data
URLs (scikit-learn's china.jpg and flower.jpg, matplotlib's grace_hopper.jpg, Open Clip Art PNGs
with transparency) — one photo per request at concurrency 1, 8 and 32, and 8 photos per request
at concurrency 4 — and then short texts through the text tower. Before timing, each server's
vectors for the same photos and texts are compared with the others' and with the bundle run by
onnxruntime in this process. Raw onnxruntime on the same batches (preprocessed, in this process)
is the ceiling. Then, in this process: where one photo's time goes (decode, resize and crop, the
model), and how far decoding a large JPEG in draft mode (at a reduced DCT scale, as the server
does) departs from decoding it whole.

    python bench/images_vs_infinity.py --scratch /work/scratch/images_vs_infinity   # installs infinity on the first run
    python bench/images_vs_infinity.py --smoke                                       # a tiny CLIP, a few requests, seconds
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import glob
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.http_client import (HOST, KeepAliveConnections, free_port, http_request, latency_summary, stop,  # noqa: E402
                               wait_ready)
from bench.report import utc_now, write_report  # noqa: E402
from bench.text_vs_infinity import (OFFLINE, SHORT_TEXTS, Setup, infinity_version, local_torch_wheel,  # noqa: E402
                                    start_embedserve)
from embedserve.machine import machine_info  # noqa: E402
from runtime.bundle import Bundle, BundleError, open_bundle  # noqa: E402
from runtime.encoders.factory import load_encoder  # noqa: E402
from runtime.preprocessing import (DECODE_MARGIN, PreprocessingSpec, decode_image, load_pixels, open_image,  # noqa: E402
                                   preprocess_batch, preprocess_image)
from runtime.tokens import load_tokenizer, text_encoder_batch  # noqa: E402
from runtime.vectors import rowwise_cosine, unit_rows  # noqa: E402
from serving.settings import Settings  # noqa: E402

MODEL = "clip-b32"  # the name every server serves the model under
INFINITY_PACKAGES = ("infinity-emb[server,torch,vision]", "aiohttp")  # aiohttp: infinity resolves image inputs with it
# torchvision's PyPI wheel is built for the CUDA torch and fails to register its operators on the CPU
# torch that keeps the venv small; transformers then preprocesses images with PIL, as without torchvision
INFINITY_WITHOUT = ("torchvision",)
INFINITY_DTYPES = ("float32", "int8")  # its torch engine's --dtype, one server each
STARTUP_TIMEOUT_S = 600.0
PHOTOS_PER_BATCH_REQUEST = 8
# (input, items per request, concurrency): one photo per request at 1, 8 and 32 requests in flight;
# 8 photos per request at 4 in flight, the same 32 photos in flight as the busiest single-photo cell
IMAGE_CELLS = (("photo", 1, 1), ("photo", 1, 8), ("photo", 1, 32), ("8 photos", PHOTOS_PER_BATCH_REQUEST, 4))
TEXT_CELLS = (("text", 1, 1), ("text", 1, 8), ("text", 1, 32))
OPENCLIPART_ROOT = Path("/usr/share/openclipart/png")
OPENCLIPART_PHOTOS = 5  # transparent Open Clip Art PNGs among the photos
DRAFT_MOSAIC = 4  # a large photo for draft decoding: a photo tiled DRAFT_MOSAIC × DRAFT_MOSAIC, real detail at full size


# --- the model folder, as a user would bring it ------------------------------------------------

def write_clip_folder(folder: Path, tiny: bool) -> None:
    """A random-weight Hugging Face CLIPModel folder as the tests make theirs (tests/clip_models.py:
    transformers' save_pretrained, CLIP's BPE from the open-clip-torch wheel as tokenizer.json, a
    CLIPImageProcessor config), `tiny` for --smoke, else at CLIPConfig's defaults, which are
    ViT-B/32's shapes (224² input, 32² patches, 12 layers of 768; text 12 layers of 512; 512-d) and,
    like openai/clip-vit-base-patch32's config, the legacy eos_token_id 2; resized on the shortest
    side to 224 bicubic, centre-cropped to 224. Run in a child process: torch stays out of the client."""
    from tests.clip_models import clip_bpe, write_transformers_clip

    if tiny:
        write_transformers_clip(folder)
        return
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPModel(CLIPConfig()).eval().save_pretrained(folder)
    vocab, merges = clip_bpe()
    CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges]).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)  # written last


def clip_folder(folder: Path, tiny: bool) -> Path:
    if not (folder / "preprocessor_config.json").is_file():  # written last
        child = multiprocessing.get_context("spawn").Process(target=write_clip_folder, args=(folder, tiny))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"writing the CLIP folder {folder} failed (exit code {child.exitcode})")
    return folder


def imported_bundle(artifacts: Path, folder: Path) -> Bundle:
    """The embedserve bundle of `folder`, imported once (in a child process, as a user runs it)."""
    try:
        return open_bundle(artifacts, MODEL)
    except BundleError:
        pass
    subprocess.run([sys.executable, "-m", "embedserve", "import", "clip", str(folder), "--name", MODEL,
                    "--artifacts", str(artifacts)], check=True, cwd=ROOT, env={**os.environ, **OFFLINE})
    return open_bundle(artifacts, MODEL)


# --- inputs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes  # the file's bytes, as a client sends them

    @property
    def data_url(self) -> str:
        kind = "jpeg" if self.data.startswith(b"\xff\xd8") else "png"
        return f"data:image/{kind};base64,{base64.b64encode(self.data).decode()}"


def installed_photos() -> list[Photo]:
    """The JPEG photos installed packages ship, and Open Clip Art PNGs with transparency of several
    hundred pixels (every so many of them in name order, so several categories) when installed."""
    import matplotlib
    import sklearn

    paths = [Path(sklearn.__file__).parent / "datasets" / "images" / name for name in ("china.jpg", "flower.jpg")]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    art = sorted(glob.glob(str(OPENCLIPART_ROOT / "**" / "*.png"), recursive=True))
    transparent = []
    for path in art[::97]:
        with Image.open(path) as img:
            if (img.mode in ("RGBA", "LA") or "transparency" in img.info) and 300 <= min(img.size) <= 1000:
                transparent.append(Path(path))
    paths += transparent[:OPENCLIPART_PHOTOS]
    return [Photo(str(p.relative_to(OPENCLIPART_ROOT)) if p.is_relative_to(OPENCLIPART_ROOT) else p.name, p.read_bytes())
            for p in paths]


def describe(photo: Photo) -> str:
    with Image.open(io.BytesIO(photo.data)) as img:
        return f"{photo.name} ({img.width}x{img.height} {img.format} {img.mode}, {len(photo.data) // 1000} kB)"


# --- infinity, in its own venv ---------------------------------------------------------------

def ensure_infinity(scratch: Path, install: bool) -> Path | None:
    """The `infinity_emb` command of the venv under `scratch`; installed there when `install` and absent
    (a CPU torch wheel first where this machine has one: see bench.text_vs_infinity.local_torch_wheel)."""
    venv = scratch / "infinity-venv"
    command = venv / "bin" / "infinity_emb"
    if command.is_file() or not install:
        return command if command.is_file() else None
    print(f"installing {' '.join(INFINITY_PACKAGES)} into {venv} (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    wheel = local_torch_wheel()
    if wheel:
        subprocess.run([*pip, "install", "--quiet", wheel], check=True)
    subprocess.run([*pip, "install", "--quiet", *INFINITY_PACKAGES], check=True)
    subprocess.run([*pip, "uninstall", "--yes", "--quiet", *INFINITY_WITHOUT], check=True)
    return command


def start_infinity(command: Path, folder: Path, dtype: str, port: int, scratch: Path, log) -> subprocess.Popen:
    """infinity's torch engine on `folder` at `dtype`: float32, or int8 (on a CPU, torch's dynamic
    quantisation of the Linear layers, torch.quantization.quantize_dynamic)."""
    env = {**os.environ, **OFFLINE, "HF_HOME": str(scratch / "hf-home"), "INFINITY_CACHE_DIR": str(scratch / "infinity-cache")}
    argv = [str(command), "v2", "--model-id", str(folder), "--served-model-name", MODEL, "--engine", "torch",
            "--dtype", dtype, "--device", "cpu", "--host", HOST, "--port", str(port),
            "--no-vector-disk-cache"]  # its cache would answer the bench's repeated inputs without the model; embedserve has none
    return subprocess.Popen(argv, env=env, cwd=scratch, stdout=log, stderr=subprocess.STDOUT)


# --- one server --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    name: str
    start: object  # (port, log) -> Popen
    ready_path: str
    embed_path: str
    modality_field: bool  # infinity's body says "modality"; embedserve tells a data URL from a text itself

    def body(self, inputs: list[str], modality: str) -> bytes:
        body = {"model": MODEL, "input": inputs, "encoding_format": "float"}
        if self.modality_field:
            body["modality"] = modality
        return json.dumps(body).encode()


async def embeddings(client: httpx.AsyncClient, server: Server, inputs: list[str], modality: str) -> np.ndarray:
    """One request's unit vectors (n, D), in input order."""
    answer = await client.post(server.embed_path, content=server.body(inputs, modality),
                               headers={"Content-Type": "application/json"})
    if answer.status_code != 200:
        raise RuntimeError(f"{server.embed_path} answered {answer.status_code}: {answer.text[:300]}")
    return unit_rows(np.array([d["embedding"] for d in sorted(answer.json()["data"], key=lambda d: d["index"])]))


async def drive(port: int, requests_bytes: list[bytes], per_request: int, concurrency: int, requests: int,
                server_pid: int) -> dict:
    """`requests` POSTs of `per_request` items each, `concurrency` in flight; every answer must be 200."""
    # warm-up on connections of its own: a connection answered early would sit idle until the slowest
    # warm-up answer, past uvicorn's keep-alive timeout (5 s) where a photo takes a fifth of a second
    async with KeepAliveConnections(port, concurrency) as connections:
        await connections.warm_up(requests_bytes)
    async with KeepAliveConnections(port, concurrency) as connections:
        run = await connections.drive(requests_bytes, requests, (server_pid,))
    items = requests * per_request
    return latency_summary(run.latencies_s, items, run.wall_s, "items") | run.cores() | {
        "requests": requests, "items_per_request": per_request,
        "server_cpu_ms_per_item": None if run.server_cpu_s is None else round(run.server_cpu_s * 1000 / items, 2)}


async def bench_server(server: Server, photos: list[Photo], texts: list[str], requests: dict[str, int], scratch: Path) -> dict:
    """Start one server, take its vectors for every photo and text, drive every cell, stop it."""
    port = free_port()
    log_path = scratch / f"{server.name.replace(' ', '-').replace('(', '').replace(')', '')}.log"
    with open(log_path, "w") as log:
        process = server.start(port, log)
        try:
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=300.0) as client:
                startup_s = await wait_ready(client, process, server.ready_path, server.name)
                image_vectors = np.concatenate([await embeddings(client, server, [p.data_url], "image") for p in photos])
                text_vectors = await embeddings(client, server, texts, "text")
            print(f"  {server.name}: ready in {startup_s:.0f} s", flush=True)
            result = {"startup_s": round(startup_s, 1), "image_vectors": image_vectors, "text_vectors": text_vectors, "cells": {}}
            urls = [p.data_url for p in photos]
            for kind, per_request, c in IMAGE_CELLS + TEXT_CELLS:
                modality = "text" if kind == "text" else "image"
                items = texts if modality == "text" else urls
                bodies = [server.body([items[(i + j) % len(items)] for j in range(per_request)], modality) for i in range(len(items))]
                prebuilt = [http_request("POST", server.embed_path, port, b, "application/json") for b in bodies]
                load = os.getloadavg()[0]
                count = max(2 * c, requests[modality] // per_request)
                cell = await drive(port, prebuilt, per_request, c, count, process.pid) | {"load_average_1min": round(load, 2)}
                result["cells"][(kind, c)] = cell
                print(f"  {server.name} {kind} c={c}: {cell}", flush=True)
            return result
        except Exception as e:
            raise RuntimeError(f"{server.name}: {e} (its log: {log_path})") from e
        finally:
            stop(process)


# --- the model alone ---------------------------------------------------------------------------

def encoders(bundle: Bundle, precision: str) -> dict:
    """The bundle's two towers as the server runs them at `precision` (its settings' threads), in this process."""
    config = dataclasses.replace(Settings().runtime_config(), precision=precision)
    return {"image": load_encoder(bundle, config, "image_encoder"), "text": load_encoder(bundle, config, "text_encoder")}


def variants(towers: dict) -> str:
    """The variants two towers run, as one label: "int8", or "image int8, text fp32"."""
    image, text = towers["image"].precision, towers["text"].precision
    return image if image == text else f"image {image}, text {text}"


def bench_raw(towers: dict, image_batch: np.ndarray, text_batch: np.ndarray, requests: dict[str, int]) -> dict:
    """Each cell's items in flight (items per request × concurrency) as the server would batch them:
    min(items, batches in flight) callers side by side, each calling batches of items / callers
    (at most max_batch_size), preprocessed or tokenised already, over and over."""
    settings = Settings()
    cells = {}
    for kind, per_request, c in IMAGE_CELLS + TEXT_CELLS:
        modality = "text" if kind == "text" else "image"
        source = text_batch if modality == "text" else image_batch
        in_flight = per_request * c
        callers = min(in_flight, settings.batches_in_flight)
        rows = min(settings.max_batch_size, in_flight // callers)
        batch = source[np.arange(rows) % len(source)]  # (rows, C, H, W) or (rows, 2, T)
        encoder = towers[modality]
        encoder.encode(batch)  # warm-up
        calls = max(2, requests[modality] // (callers * rows))

        def caller() -> list[float]:
            latencies = []
            for _ in range(calls):
                t = time.perf_counter()
                encoder.encode(batch)
                latencies.append(time.perf_counter() - t)
            return latencies

        start = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            latencies = [t for run in pool.map(lambda _: caller(), range(callers)) for t in run]
        cells[(kind, c)] = latency_summary(latencies, calls * callers * rows, time.perf_counter() - start, "items") | {
            "batch": rows, "callers": callers}
        print(f"  raw onnxruntime {variants(towers)} {kind} c={c}: {cells[(kind, c)]}", flush=True)
    return {"variants": variants(towers), "cells": cells}


def median_ms(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1000, 2)


def stages(photos: list[Photo], spec: PreprocessingSpec, towers: dict[str, dict], repeats: int) -> list[dict]:
    """Per photo, medians of `repeats`: the header read and the pixel decode (at about the model's
    size, as the server decodes), the conversion, resize, crop and scaling to the model's input,
    and the image tower on that one photo at each precision."""
    rows = []
    for photo in photos:
        image = decode_image(photo.data, resize=spec.resize)
        batch = preprocess_image(image, spec)[None]  # (1, C, H, W)
        row = {"photo": describe(photo),
               "decode_ms": median_ms(lambda: load_pixels(open_image(photo.data), resize=spec.resize), repeats),
               "preprocess_ms": median_ms(lambda: preprocess_image(image, spec), repeats)}
        for precision, tower in towers.items():
            row[f"model_{precision}_ms"] = median_ms(lambda: tower["image"].encode(batch), repeats)
        rows.append(row)
        print(f"  stages: {row}", flush=True)
    return rows


def large_jpegs(photos: list[Photo]) -> list[Photo]:
    """Photos much larger than the model's input, as draft decoding meets them: each installed JPEG
    tiled DRAFT_MOSAIC × DRAFT_MOSAIC (a photo's own detail at full size, not an upscale's blur),
    saved as a JPEG of quality 90."""
    out = []
    for photo in photos:
        if not photo.data.startswith(b"\xff\xd8"):
            continue
        with Image.open(io.BytesIO(photo.data)) as img:
            tile = img.convert("RGB")
        mosaic = Image.new("RGB", (tile.width * DRAFT_MOSAIC, tile.height * DRAFT_MOSAIC))
        for i in range(DRAFT_MOSAIC * DRAFT_MOSAIC):
            mosaic.paste(tile, ((i % DRAFT_MOSAIC) * tile.width, (i // DRAFT_MOSAIC) * tile.height))
        buffer = io.BytesIO()
        mosaic.save(buffer, "JPEG", quality=90)
        out.append(Photo(f"{photo.name} tiled {DRAFT_MOSAIC}x{DRAFT_MOSAIC}", buffer.getvalue()))
    return out


def draft_departure(photos: list[Photo], spec: PreprocessingSpec, tower, repeats: int) -> list[dict]:
    """How far the server's draft-mode decode of a large JPEG (runtime.preprocessing.load_pixels with
    the model's resize) departs from decoding it whole, through the same preprocessing: the largest
    difference of a model-input pixel in 0-255 grey levels, the fp32 image tower's cosine, and the
    time from the file's bytes to the model's input either way."""
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    rows = []
    for photo in large_jpegs(photos):
        full, draft = decode_image(photo.data), decode_image(photo.data, resize=spec.resize)
        inputs = preprocess_batch([full, draft], spec)  # (2, C, H, W)
        vectors = tower.encode(inputs)  # (2, D)
        rows.append({"photo": describe(photo), "decoded_at": f"{draft.width}x{draft.height}",
                     "max_pixel_diff_0_255": round(float(np.abs((inputs[0] - inputs[1]) * std).max() * 255), 2),
                     "mean_pixel_diff_0_255": round(float(np.abs((inputs[0] - inputs[1]) * std).mean() * 255), 3),
                     "cosine_fp32": round(float(rowwise_cosine(vectors[:1], vectors[1:])[0]), 6),
                     "full_decode_and_preprocess_ms": median_ms(
                         lambda: preprocess_image(load_pixels(open_image(photo.data)), spec), repeats),
                     "draft_decode_and_preprocess_ms": median_ms(
                         lambda: preprocess_image(load_pixels(open_image(photo.data), resize=spec.resize), spec), repeats)})
        print(f"  draft: {rows[-1]}", flush=True)
    return rows


# --- the report --------------------------------------------------------------------------------

def agreement(vectors: dict[str, dict], reference: dict[str, np.ndarray], photos: list[Photo]) -> dict:
    """Every pair of servers (and raw onnxruntime fp32 in this process): the lowest cosine between
    their vectors of the same text and of the same photo, and per photo; and, to read them by, the
    mean cosine between different photos (a random-weight model maps every photo to nearby directions)."""
    every = {"raw onnxruntime fp32": reference, **vectors}
    names = list(every)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    cosines = {(a, b, m): rowwise_cosine(every[a][m], every[b][m]) for a, b in pairs for m in ("image", "text")}
    images = reference["image"]
    between = images @ images.T  # (n, n)
    return {
        "min_cosine": {f"{a} vs {b}": {m: round(float(cosines[(a, b, m)].min()), 6) for m in ("image", "text")} for a, b in pairs},
        "per_photo": [{"photo": photo.name, **{f"{a} vs {b}": round(float(cosines[(a, b, "image")][i]), 6) for a, b in pairs}}
                      for i, photo in enumerate(photos)],
        "mean_cosine_between_different_photos": round(float(between[~np.eye(len(images), dtype=bool)].mean()), 6),
    }


def ratios(results: dict[str, dict], raw: dict[str, dict], served: dict[str, str]) -> dict:
    """Per embedserve server and cell: its items/s over the fastest infinity server's in that cell,
    its p99 and server CPU per item over that server's, and its items/s over raw onnxruntime on its variants."""
    peers = {name: r for name, r in results.items() if name.startswith("infinity")}
    out = {}
    for ours, variant in served.items():
        for key, cell in results[ours]["cells"].items():
            entry = {"gateway_over_raw_onnxruntime": round(cell["items_per_s"] / raw[variant]["cells"][key]["items_per_s"], 3)}
            if peers:
                best = max(peers, key=lambda name: peers[name]["cells"][key]["items_per_s"])
                theirs = peers[best]["cells"][key]
                entry |= {"fastest_infinity": best,
                          "items_per_s_ours_over_infinity": round(cell["items_per_s"] / theirs["items_per_s"], 3),
                          "p99_ours_over_infinity": round(cell["p99_ms"] / theirs["p99_ms"], 3)}
                if cell.get("server_cpu_ms_per_item") and theirs.get("server_cpu_ms_per_item"):
                    entry["cpu_per_item_ours_over_infinity"] = round(cell["server_cpu_ms_per_item"] / theirs["server_cpu_ms_per_item"], 3)
            out[f"{ours}: {key[0]} c={key[1]}"] = entry
    return out


def targets(table: dict, servers) -> dict:
    """The issue's targets, per embedserve server: ≥ 1.5× the fastest infinity server's images/s at
    every image cell with p99 no worse, and the gateway ≥ 0.8 of raw onnxruntime with one photo per
    request at c=32."""
    out = {}
    for ours in servers:
        cells = {k: v for k, v in table.items() if k.startswith(f"{ours}: ") and "text" not in k}
        entry = {"gateway_over_raw_at_c32": cells[f"{ours}: photo c=32"]["gateway_over_raw_onnxruntime"]}
        entry["gateway_at_least_0.8_of_raw_at_c32"] = entry["gateway_over_raw_at_c32"] >= 0.8
        if all("items_per_s_ours_over_infinity" in v for v in cells.values()):
            entry["at_least_1.5x_infinity_images_per_s_everywhere"] = all(v["items_per_s_ours_over_infinity"] >= 1.5 for v in cells.values())
            entry["p99_no_worse_than_infinity_everywhere"] = all(v["p99_ours_over_infinity"] <= 1.0 for v in cells.values())
        out[ours] = entry
    return out


def print_table(results: dict[str, dict], raw: dict[str, dict]) -> None:
    print(f"\n{'server':<40}{'input':<10}{'c':>4}{'items/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server cpu':>12}"
          f"{'cpu ms/item':>13}{'load 1m':>9}")
    for name, r in results.items():
        for (kind, c), cell in r["cells"].items():
            cpu, per = ("-", "-") if cell.get("server_cpu") is None else (f"{cell['server_cpu']:.2f}", f"{cell['server_cpu_ms_per_item']:.1f}")
            print(f"{name:<40}{kind:<10}{c:>4}{cell['items_per_s']:>9.1f}{cell['p50_ms']:>9.1f}{cell['p99_ms']:>9.1f}"
                  f"{cpu:>12}{per:>13}{cell['load_average_1min']:>9.2f}")
    for precision, r in raw.items():
        for (kind, c), cell in r["cells"].items():
            print(f"{'raw onnxruntime ' + precision:<40}{kind:<10}{c:>4}{cell['items_per_s']:>9.1f}{cell['p50_ms']:>9.1f}"
                  f"{cell['p99_ms']:>9.1f}{'-':>12}{'-':>13}{'-':>9}")
    print("c: requests in flight; items: photos or texts (8 photos per request in the '8 photos' rows); raw onnxruntime: "
          "the same items in flight as preprocessed batches in this process (p50/p99: per batch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=ROOT / "artifacts" / "bench-scratch" / "images_vs_infinity",
                        help="infinity's venv, the CLIP folder, its bundle and the servers' logs (kept between runs)")
    parser.add_argument("--no-infinity", action="store_true", help="leave infinity out")
    parser.add_argument("--image-requests", type=int, default=128, help="photos per cell")
    parser.add_argument("--text-requests", type=int, default=256, help="texts per cell")
    parser.add_argument("--repeats", type=int, default=20, help="times each in-process stage is timed (their median)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny CLIP, a few requests, results in a temporary folder; infinity only when its venv is there already")
    parser.add_argument("--out", type=Path, default=None, help="the result JSON (default: bench/results/images_vs_infinity.json, "
                                                              "with --smoke a temporary file)")
    args = parser.parse_args()
    if args.smoke:
        args.image_requests, args.text_requests, args.repeats = 8, 8, 2
        with tempfile.TemporaryDirectory(prefix="images-vs-infinity-") as temporary:
            run(args, Path(temporary))
    else:
        run(args, args.scratch.resolve())


def run(args: argparse.Namespace, work: Path) -> None:
    """The whole bench; `work` holds the CLIP folder and its bundle (the scratch folder, or with --smoke a temporary one)."""
    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    out = args.out or (work / "images_vs_infinity.json" if args.smoke else ROOT / "bench" / "results" / "images_vs_infinity.json")
    machine_before = machine_info("onnxruntime", "uvicorn", "uvloop", "httptools", "httpx", "pillow")

    folder = clip_folder(work / ("clip-tiny-random" if args.smoke else "clip-vit-b-32-random"), tiny=args.smoke)
    bundle = imported_bundle(work / "artifacts", folder)
    spec = bundle.manifest.preprocessing
    photos = installed_photos()
    texts = SHORT_TEXTS
    print(f"model {folder} as bundle {bundle.path}; preprocessing {spec.to_dict()}", flush=True)
    for photo in photos:
        print(f"  photo {describe(photo)}", flush=True)
    requests = {"image": args.image_requests, "text": args.text_requests}

    # the model alone, in this process, first: the reference vectors and the ceiling; each server's
    # towers at the variant its precision setting picks here (the server picks the same on this CPU)
    settings_precision = {"embedserve (defaults)": Settings().precision, "embedserve fp32": "fp32"}
    towers: dict[str, dict] = {}  # by the variants they run
    served: dict[str, str] = {}  # server -> its key in towers
    for name, setting in settings_precision.items():
        loaded = encoders(bundle, setting)
        served[name] = variants(loaded)
        towers.setdefault(served[name], loaded)
    image_batch = preprocess_batch([decode_image(p.data, resize=spec.resize) for p in photos], spec)  # (n, C, H, W)
    text_batch = text_encoder_batch(load_tokenizer(bundle.file("tokenizer")), texts)  # (n, 2, T)
    fp32 = towers[served["embedserve fp32"]]
    reference = {"image": unit_rows(fp32["image"].encode(image_batch)), "text": unit_rows(fp32["text"].encode(text_batch))}

    failures: dict[str, str] = {}
    servers = [Server(name, lambda port, log, p=setting: start_embedserve(work / "artifacts", Setup.parse("default"), p, port, log),
                      "/readyz", "/v1/embeddings", False)
               for name, setting in settings_precision.items()]
    version = None
    if not args.no_infinity:
        try:
            command = ensure_infinity(scratch, install=not args.smoke)
        except subprocess.CalledProcessError as e:
            command, failures["infinity"] = None, f"{' '.join(INFINITY_PACKAGES)} could not be installed: {e}"
        if command is None:
            failures.setdefault("infinity", f"no infinity venv under {scratch} (--smoke does not install one)")
        else:
            version = infinity_version(command)
            servers += [Server(f"infinity torch {dtype}", lambda port, log, dtype=dtype: start_infinity(
                command, folder, dtype, port, scratch, log), "/health", "/embeddings", True) for dtype in INFINITY_DTYPES]

    results: dict[str, dict] = {}
    for server in servers:
        try:
            results[server.name] = asyncio.run(bench_server(server, photos, texts, requests, scratch))
        except RuntimeError as e:
            if not server.name.startswith("infinity"):
                raise
            failures[server.name] = str(e)
            print(f"  {server.name} failed: {e}", flush=True)
    vectors = {name: {"image": r.pop("image_vectors"), "text": r.pop("text_vectors")} for name, r in results.items()}
    raw = {precision: bench_raw(t, image_batch, text_batch, requests) for precision, t in towers.items()}
    stage_rows = stages(photos, spec, towers, args.repeats)
    draft_rows = draft_departure(photos, spec, fp32["image"], args.repeats)
    machine = machine_info("onnxruntime", "uvicorn", "uvloop", "httptools", "httpx", "pillow")

    print_table(results, raw)
    ours = {name: key for name, key in served.items() if name in results}
    table = ratios(results, raw, ours)
    met = targets(table, ours)
    agree = agreement(vectors, reference, photos)
    for line in (*(f"{k}: {v}" for k, v in table.items()), *(f"cosine {k}: {v}" for k, v in agree["min_cosine"].items()),
                 *(f"cosine per photo: {row}" for row in agree["per_photo"]),
                 *(f"targets {k}: {v}" for k, v in met.items()), *(f"not measured: {k}: {v}" for k, v in failures.items())):
        print(line)
    write_report(out, {
        "benchmark": "images_vs_infinity",
        "date": utc_now(),
        "machine": machine,
        "load_average_at_start_1_5_15min": machine_before["load_average_1_5_15min"],
        "note": ("the machine's cores were shared with other work while this ran: each cell records the 1-minute load average "
                 "at its start; above the core count means the servers had less than the whole CPU"),
        "smoke": args.smoke,
        "model": {"folder": str(folder), "bundle": str(bundle.path), "name": MODEL, "dim": bundle.manifest.dim,
                  "shape": "tiny (2 layers of 32 per tower)" if args.smoke else "ViT-B/32 (CLIPConfig's defaults), random weights",
                  "preprocessing": spec.to_dict(), "served_variants": served},
        "photos": [describe(p) for p in photos],
        "texts": texts,
        "infinity": {"packages": list(INFINITY_PACKAGES), "uninstalled": list(INFINITY_WITHOUT), "version": version,
                     "command": f"infinity_emb v2 --model-id <folder> --served-model-name {MODEL} --engine torch --dtype "
                                "<float32|int8> --device cpu --no-vector-disk-cache (every other option at infinity's default)"},
        "settings": {"image_requests_per_cell": args.image_requests, "text_requests_per_cell": args.text_requests,
                     "cells": [list(c) for c in IMAGE_CELLS + TEXT_CELLS],
                     "embedserve": "uvicorn, 1 worker, the settings' defaults but EMBEDSERVE_PRECISION (auto, fp32)",
                     "cores": len(os.sched_getaffinity(0)),
                     "client": "raw asyncio streams in the bench process, prebuilt POST requests with OpenAI's body and "
                               "base64 data URLs, one keep-alive connection per concurrent request"},
        "results": [{"server": name, "input": kind, "concurrency": c, **cell}
                    for name, r in results.items() for (kind, c), cell in r["cells"].items()],
        "servers": {name: {k: v for k, v in r.items() if k != "cells"} for name, r in results.items()},
        "raw_onnxruntime": [{"variants": variant, "input": kind, "concurrency": c, **cell}
                            for variant, r in raw.items() for (kind, c), cell in r["cells"].items()],
        "ratios": table,
        "targets": met,
        "vectors": agree,
        "stages": stage_rows,
        "draft_decoding": {"decode_margin": DECODE_MARGIN, "photos": draft_rows},
        "not_measured": failures,
    })


if __name__ == "__main__":
    main()
