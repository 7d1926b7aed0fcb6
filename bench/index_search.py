"""Index search: recall@10 and queries/s of FAISS Flat, HNSW and IVF-PQ (embedserve's VectorIndex,
as the server builds them) and of Milvus Lite (index.milvus_index), beside brute-force numpy.

Two data sets: `--n` synthetic 128-d vectors (default one million: a mixture of 1000 Gaussian
clusters, so that neighbours mean something, as in real embeddings; pure noise in 128-d has no
near neighbours to find), and, when `--artifacts` holds indexes of a trained model, each one's
own vectors (its first `--queries` items are the queries, the rest the base). The ground truth is
the exact top-10 by cosine from numpy; recall@10 is the share of it each index returns.

Queries/s are single queries, one after another, on one thread (faiss.omp_set_num_threads(1)
and one BLAS thread): the server's pattern, one request's query per search call, and fair on a
shared machine. Builds may use `--build-threads`. The approximate kinds are also timed at wider
search settings (HNSW efSearch, IVF nprobe) to show where recall@10 reaches 0.95.

    python bench/index_search.py                                   # 1M x 128 and artifacts/
    python bench/index_search.py --n 100000 --artifacts /tmp/demo/artifacts
    python bench/index_search.py --n 20000 --milvus-max-n 0        # quick, without Milvus
    python bench/index_search.py --smoke                           # 1000 vectors, 20 queries, no trained indexes: seconds

Writes bench/results/index_search.json with the machine (and its load) and the date.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread for numpy's brute force, as for FAISS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from index.config import IndexConfig  # noqa: E402
from index.vector_index import VectorIndex, iter_current_indexes  # noqa: E402
from runtime.vectors import unit_rows  # noqa: E402

K = 10
TARGET = {"recall_at_10": 0.95, "speedup_vs_flat": 10.0}  # the issue's: an approximate index at both
HNSW_EF_SWEEP = (64, 128, 256)  # 64 is the server's efSearch
IVF_NPROBE_SWEEP = (16, 64)  # 16 is the server's nprobe
SMOKE = {"n": 1000, "queries": 20, "max_seconds": 0.2}  # --smoke's sizes


def synthetic(n: int, queries: int, dim: int = 128, clusters: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` base and `queries` query vectors (unit rows) from one mixture of Gaussian clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # (C, D)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), np.float32)
        for start in range(0, count, 100_000):  # in chunks: 1M x 128 float64 noise would be 1 GB
            stop = min(start + 100_000, count)
            labels = rng.integers(0, clusters, stop - start)
            out[start:stop] = centres[labels] + 0.5 * rng.standard_normal((stop - start, dim)).astype(np.float32)
        return unit_rows(out)

    return draw(n), draw(queries)


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """The exact top-k ids (Q, k) by inner product of unit rows, in blocks of queries."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 100):
        scores = queries[start:start + 100] @ base.T  # (q, N)
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
        out[start:start + 100] = np.take_along_axis(part, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def timed_queries(search, queries: np.ndarray, max_queries: int, max_seconds: float) -> tuple[np.ndarray, float, int]:
    """Run `search(query (1, D)) -> ids (1, k)` one query at a time: (ids (Q, k), queries/s, queries timed).
    Stops after `max_seconds` (the slow rows); recall is then over the queries it ran."""
    search(queries[:1])  # a first search may load or build something: not timed
    found = []
    started = time.perf_counter()
    for q in queries[:max_queries]:
        found.append(search(q[None, :])[0])
        if time.perf_counter() - started > max_seconds:
            break
    elapsed = time.perf_counter() - started
    return np.asarray(found), len(found) / elapsed, len(found)


def bench_dataset(name: str, base: np.ndarray, queries: np.ndarray, args: argparse.Namespace, milvus_dir: Path) -> list[dict]:
    n, dim = base.shape
    ids = np.arange(n, dtype=np.int64)
    print(f"\n{name}: {n} x {dim}, {len(queries)} queries; exact top-{K} by numpy ...", flush=True)
    started = time.perf_counter()
    truth = exact_top_k(base, queries)
    print(f"  ground truth in {time.perf_counter() - started:.1f} s", flush=True)
    rows: list[dict] = []

    def row(method: str, params: str, build_s: float, found: np.ndarray, qps: float, timed: int, memory: int | None) -> None:
        rows.append({"dataset": name, "n": n, "dim": dim, "method": method, "params": params, "build_s": round(build_s, 1),
                     "recall_at_10": round(recall(found, truth[:len(found)]), 4), "queries_per_s": round(qps, 1),
                     "queries_timed": timed, "memory_mb": round(memory / 2**20, 1) if memory else None})
        r = rows[-1]
        print(f"  {method:<12} {params:<22} recall@10 {r['recall_at_10']:.3f}  {qps:9.1f} q/s  build {build_s:6.1f} s", flush=True)

    found, qps, timed = timed_queries(lambda q: exact_top_k(base, q), queries, args.queries, args.max_seconds)
    row("numpy", "brute force", 0.0, found, qps, timed, base.nbytes)

    faiss.omp_set_num_threads(args.build_threads)
    for kind in [k for k in ("flat", "hnsw", "ivfpq") if k == "flat" or k in args.kinds]:  # Flat: the yardstick
        started = time.perf_counter()
        index = VectorIndex.build(ids, base, kind=kind)
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        memory = len(faiss.serialize_index(index.index)) if n <= 2_000_000 else None
        found, qps, timed = timed_queries(lambda q: index.search(q, K)[1], queries, args.queries, args.max_seconds)
        label = {"flat": "faiss Flat", "hnsw": "faiss HNSW", "ivfpq": "faiss IVF-PQ"}[kind]
        default = {"flat": "exact", "hnsw": "M=32 ef=64 (server)", "ivfpq": "nprobe=16 (server)"}[kind]
        row(label, default, build_s, found, qps, timed, memory)
        # wider settings, on the same FAISS index (VectorIndex searches with the server's)
        inner = faiss.downcast_index(index.index.index) if kind == "hnsw" else index.index
        for value in (HNSW_EF_SWEEP[1:] if kind == "hnsw" else IVF_NPROBE_SWEEP[1:] if kind == "ivfpq" else ()):
            params = (faiss.SearchParametersHNSW(efSearch=value) if kind == "hnsw"
                      else faiss.SearchParametersIVF(nprobe=value))
            searcher = index.index if kind == "hnsw" else inner
            found, qps, timed = timed_queries(lambda q: searcher.search(q, K, params=params)[1], queries, args.queries,
                                              args.max_seconds)
            row(label, f"{'M=32 ef' if kind == 'hnsw' else 'nprobe'}={value}", build_s, found, qps, timed, memory)
        del index, inner
        faiss.omp_set_num_threads(args.build_threads)

    if "milvus" in args.kinds and n <= args.milvus_max_n and milvus_installed():
        from index.milvus_index import MilvusStore  # the milvus extra

        store = MilvusStore(IndexConfig(backend="milvus", milvus_uri=str(milvus_dir / f"{name.replace('/', '_')}.db")))
        try:
            for kind in ("flat", "hnsw"):
                started = time.perf_counter()
                index = store.build(f"bench_{kind}", ids, base, kind=kind)
                build_s = time.perf_counter() - started
                found, qps, timed = timed_queries(lambda q: index.search(q, K)[1], queries, args.queries, args.max_seconds)
                row("Milvus Lite", {"flat": "FLAT", "hnsw": "HNSW M=32 ef=64"}[kind], build_s, found, qps, timed, None)
                store.client.drop_collection(index.collection)
        finally:
            store.close()
    elif "milvus" in args.kinds and n > args.milvus_max_n:
        print(f"  Milvus Lite skipped: n={n} is above --milvus-max-n {args.milvus_max_n}", flush=True)

    flat_qps = next(r["queries_per_s"] for r in rows if r["method"] == "faiss Flat")
    for r in rows:
        r["speedup_vs_flat"] = round(r["queries_per_s"] / flat_qps, 2)
    return rows


def milvus_installed() -> bool:
    """Whether the milvus extra (pymilvus and Milvus Lite) is installed; without it the Milvus rows are left out."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("pymilvus", "milvus_lite"))


def real_embeddings(artifacts: Path, queries: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, base, queries) of each index under `artifacts`: its stored vectors, first ones as queries."""
    out = []
    for index in iter_current_indexes(artifacts):
        if index.index is None or index.index.ntotal < 2 * queries:
            continue
        vectors = index.index.index.reconstruct_n(0, index.index.ntotal) if isinstance(index.index, faiss.IndexIDMap2) \
            else np.stack([index.vector(int(i)) for i in index.ids()])
        vectors = unit_rows(vectors)
        out.append((f"{index.manifest.name} ({index.model} {index.model_version})", vectors[queries:], vectors[:queries]))
    return out


def print_table(rows: list[dict]) -> None:
    header = f"{'dataset':<44} {'method':<12} {'params':<22} {'recall@10':>9} {'q/s':>9} {'x Flat':>7} {'build s':>8} {'MB':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['dataset'][:44]:<44} {r['method']:<12} {r['params']:<22} {r['recall_at_10']:>9.3f} {r['queries_per_s']:>9.1f} "
              f"{r['speedup_vs_flat']:>7.2f} {r['build_s']:>8.1f} {r['memory_mb'] if r['memory_mb'] is not None else '':>7}")


def verdict(rows: list[dict]) -> list[dict]:
    """Per data set: the approximate rows at recall@10 >= 0.95 and >= 10x Flat's queries/s."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        meeting = [f"{r['method']} {r['params']}" for r in rows if r["dataset"] == dataset and r["method"] not in ("numpy", "faiss Flat")
                   and r["recall_at_10"] >= TARGET["recall_at_10"] and r["speedup_vs_flat"] >= TARGET["speedup_vs_flat"]]
        out.append({"dataset": dataset, "met": bool(meeting), "rows_meeting_target": meeting})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic base vectors (0: none)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000, help="queries per data set (each row times up to this many)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="a row stops timing after this long")
    parser.add_argument("--build-threads", type=int, default=2, help="FAISS threads while building")
    parser.add_argument("--milvus-max-n", type=int, default=1_000_000, help="run Milvus Lite only up to this many vectors")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="indexes of trained models to bench too")
    parser.add_argument("--kinds", default="hnsw,ivfpq,milvus", help="beside numpy and FAISS Flat (comma-separated)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of other data sets already in --out (a large run added to a smaller one)")
    parser.add_argument("--smoke", action="store_true",
                        help=SMOKE_HELP + f"; {SMOKE['n']} synthetic vectors, {SMOKE['queries']} queries, not --artifacts' indexes")
    parser.add_argument("--out", type=Path, help="default: bench/results/index_search.json")
    args = parser.parse_args(argv)
    args.kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}
    if args.smoke:
        args.n, args.queries, args.max_seconds = SMOKE["n"], SMOKE["queries"], SMOKE["max_seconds"]
    args.out = result_path(args.out, "index_search", args.smoke)

    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    rows: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="index-search-") as tmp:
        datasets = real_embeddings(args.artifacts, args.queries) if (args.artifacts / "indexes").is_dir() and not args.smoke else []
        if args.smoke:
            notes.append("--smoke: the indexes of trained models not run")
        elif not datasets:
            notes.append(f"no index of a trained model under {args.artifacts}: real embeddings not run")
        if "milvus" in args.kinds and not milvus_installed():
            notes.append("Milvus Lite not run: pymilvus and milvus-lite are not installed (the milvus extra)")
        for name, base, queries in datasets:
            rows += bench_dataset(name, base, queries, args, Path(tmp))
        if args.n:
            base, queries = synthetic(args.n, args.queries, args.dim)
            rows += bench_dataset(f"synthetic {args.n // 1000}k x {args.dim} (1000 clusters)", base, queries, args, Path(tmp))
    runs = [{"command": " ".join(["python", *sys.argv]), "date": utc_now(),
             "load_average_before_1_5_15min": load_before, "load_average_after_1_5_15min": [round(x, 2) for x in os.getloadavg()],
             "wall_s": round(time.perf_counter() - started, 1), "datasets": list(dict.fromkeys(r["dataset"] for r in rows))}]
    if args.merge and args.out.is_file():
        earlier = json.loads(args.out.read_text())
        ours = {r["dataset"] for r in rows}
        rows = [r for r in earlier["rows"] if r["dataset"] not in ours] + rows
        runs = earlier.get("runs", []) + runs
        notes = earlier.get("notes", []) + notes
    print_table(rows)
    verdicts = verdict(rows)
    for v in verdicts:
        print(f"{v['dataset']}: target {'met' if v['met'] else 'NOT met'}" + (f" by {', '.join(v['rows_meeting_target'])}" if v["met"] else ""))
    for note in notes:
        print("note:", note)
    result = {
        "benchmark": "index_search", "date": utc_now(), "smoke": args.smoke,
        "command": " ".join(["python", *sys.argv]), "machine": machine_info("faiss-cpu", "pymilvus", "milvus-lite"),
        "load_average_before_1_5_15min": load_before, "wall_s": round(time.perf_counter() - started, 1), "runs": runs,
        "k": K, "queries_per_dataset": args.queries, "max_seconds_per_row": args.max_seconds,
        "search_threads": 1, "build_threads": args.build_threads, "target": TARGET,
        "rows": rows, "verdicts": verdicts, "notes": notes,
    }
    write_report(args.out, result)


if __name__ == "__main__":
    main()
