"""The chart of each benchmark, drawn from its own result JSON as a PNG beside it
(bench/results/<name>.json -> bench/results/<name>.png): throughput against concurrency, ours
beside the peer, where a bench has concurrency, and its natural picture where it has none.

Each bench writes its JSON through bench.report.write_report, which calls `write_chart`; this script redraws every chart from the
JSON already in bench/results without running a benchmark again:

    python bench/charts.py                              # every bench/results/*.json
    python bench/charts.py bench/results/soak.json      # just these
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from runtime.plotting import PlotDependencyError, pyplot, save_figure  # noqa: E402

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
OURS, PEER, BASELINE = "tab:blue", "tab:orange", "tab:grey"  # one colour per side on every chart
Result = dict[str, Any]


def _figure(plt, panels: int, result: Result, title: str, width_per_panel: float = 5.5, rows: int = 1):
    columns = -(-panels // rows)
    figure, axes = plt.subplots(rows, columns, figsize=(width_per_panel * columns, 4.3 * rows), squeeze=False)
    figure.suptitle(f"{title}\n{_provenance(result)}", fontsize=11)
    return figure, [a for row in axes for a in row]


def _provenance(result: Result) -> str:
    """The date and machine a result records, for the chart's subtitle: its numbers depend on both."""
    machine = result.get("machine") or {}
    load = machine.get("load_average_1_5_15min")
    parts = [str(result.get("date", ""))[:10], machine.get("cpu"), f"{machine['cores']} cores" if "cores" in machine else None,
             f"GPU {machine['gpu']}" if machine.get("gpu") not in (None, "none") else "no GPU" if "gpu" in machine else None,
             f"1-min load {load[0]:.1f}" if load else None]
    return ", ".join(p for p in parts if p)


def _concurrency_axis(axes, concurrencies) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(concurrencies), [str(c) for c in sorted(concurrencies)])
    axes.set_xlabel("concurrent requests")
    axes.grid(alpha=0.3)


# ---- benches with concurrency: throughput against it, ours beside the peer ----

def serve_images(result: Result, plt):
    """Images/s and median latency against concurrency: the gateway's modes beside raw onnxruntime."""
    rows = result["results"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    model = result.get("model") or {}
    figure, (throughput, latency) = _figure(plt, 2, result, f"Serving images over HTTP: {model.get('name', '')} "
                                            f"{model.get('version', '')}, one image per request")
    for i, mode in enumerate(modes):
        cells = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["concurrency"])
        raw = mode == "raw onnxruntime"
        style = dict(color=BASELINE if raw else plt.get_cmap("tab10")(i), linestyle="--" if raw else "-", marker="o",
                     label=f"{mode} (no HTTP, the ceiling)" if raw else f"gateway, {mode}")
        throughput.plot([r["concurrency"] for r in cells], [r["images_per_s"] for r in cells], **style)
        latency.plot([r["concurrency"] for r in cells], [r["p50_ms"] for r in cells], **style)
    for axes in (throughput, latency):
        _concurrency_axis(axes, {r["concurrency"] for r in rows})
    throughput.set(title="throughput", ylabel="images / s", ylim=(0, None))
    latency.set(title="median latency", ylabel="p50 latency (ms)", yscale="log")
    throughput.legend(fontsize="small")
    return figure


def text_vs_infinity(result: Result, plt):
    """Requests/s against concurrency per input length: embedserve's servers beside infinity's engines."""
    rows = result["results"]
    inputs = list(dict.fromkeys(r["input"] for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    model = result.get("model") or {}
    figure, panels = _figure(plt, len(inputs), result, f"Text embeddings over HTTP (OpenAI /v1/embeddings, "
                             f"{model.get('name', 'the same model')}): embedserve against infinity")
    ours = [s for s in servers if s.startswith("embedserve")]
    peers = [s for s in servers if s not in ours]
    for axes, kind in zip(panels, inputs):
        for group, colours, dash in ((ours, ("tab:blue", "tab:cyan", "navy", "tab:purple"), "-"),
                                     (peers, ("tab:orange", "tab:red", "sienna"), "--")):
            for server, colour in zip(group, colours):
                cells = sorted((r for r in rows if r["server"] == server and r["input"] == kind), key=lambda r: r["concurrency"])
                axes.plot([r["concurrency"] for r in cells], [r["requests_per_s"] for r in cells], color=colour,
                          linestyle=dash, marker="o", label=server)
        _concurrency_axis(axes, {r["concurrency"] for r in rows})
        axes.set(title=f"{kind} texts, one per request", ylabel="requests / s", ylim=(0, None))
    panels[0].legend(fontsize="small")
    return figure



def images_vs_infinity(result: Result, plt):
    """Items/s against concurrency, photos and texts: embedserve's servers beside infinity, raw onnxruntime as the ceiling."""
    rows, raw = result["results"], result.get("raw_onnxruntime", [])
    servers = list(dict.fromkeys(r["server"] for r in rows))
    model = result.get("model") or {}
    figure, panels = _figure(plt, 2, result, f"CLIP over HTTP ({model.get('shape', '')}): embedserve against infinity, "
                             "OpenAI-style /embeddings")
    ours, peers = iter(("tab:blue", "tab:cyan", "navy", "tab:purple")), iter((PEER, "tab:red", "sienna"))
    styles = {s: dict(color=next(peers), linestyle="--") if s.startswith("infinity") else dict(color=next(ours), linestyle="-")
              for s in servers}
    for axes, modality, batched in ((panels[0], "photo", "8 photos"), (panels[1], "text", None)):
        for server in servers:
            cells = sorted((r for r in rows if r["server"] == server and r["input"] == modality), key=lambda r: r["concurrency"])
            axes.plot([r["concurrency"] for r in cells], [r["items_per_s"] for r in cells], marker="o", label=server,
                      **styles[server])
            for r in (r for r in rows if r["server"] == server and r["input"] == batched):
                axes.plot([r["concurrency"]], [r["items_per_s"]], marker="*", markersize=13, linestyle="none",
                          color=styles[server]["color"])
        for variant, shade in zip(dict.fromkeys(r["variants"] for r in raw), (BASELINE, "silver")):
            cells = sorted((r for r in raw if r["variants"] == variant and r["input"] == modality), key=lambda r: r["concurrency"])
            axes.plot([r["concurrency"] for r in cells], [r["items_per_s"] for r in cells], color=shade, linestyle=":",
                      marker="o", label=f"raw onnxruntime {variant} (no HTTP)")
        _concurrency_axis(axes, {r["concurrency"] for r in rows})
        axes.set(title=f"{modality}s, one per request" + (f" (stars: {batched} per request)" if batched else ""),
                 ylabel=f"{modality}s / s", ylim=(0, None))
    panels[0].legend(fontsize="small")
    return figure

# ---- benches without concurrency: their natural picture ----

def soak(result: Result, plt):
    """The server's memory over the soak, and what each kind of request was answered with."""
    figure, (memory, answers) = _figure(plt, 2, result, f"Soak: {result['duration_s'] / 60:.0f} minutes at "
                                        f"{result['overload']:g}x capacity ({result['offered_per_s']:.0f} requests/s "
                                        f"offered, {result['served_per_s']:.0f} served)")
    t, rss = zip(*result["rss_mb_over_time"])
    memory.plot(t, rss, color=OURS)
    memory.set(title=f"server memory (growth {result['rss_growth_pct']:.1f}%)", xlabel="time since start (s)",
               ylabel="resident memory (MB)", ylim=(0, max(rss) * 1.15))
    memory.grid(alpha=0.3)
    kinds = sorted(result["by_kind"])
    statuses = sorted({s for counts in result["by_kind"].values() for s in counts}, key=lambda s: (s != "200", s))
    bottom = [0] * len(kinds)
    for status, colour in zip(statuses, ("tab:green", "tab:orange", "tab:red", "black")):
        counts = [result["by_kind"][k].get(status, 0) for k in kinds]
        label = {"200": "200 answered", "429": "429 shed (queue full)"}.get(status, status)
        answers.barh(kinds, counts, left=bottom, color=colour, label=label)
        bottom = [b + c for b, c in zip(bottom, counts)]
    answers.set(title="answers by kind of request", xlabel="requests")
    answers.legend(fontsize="small", loc="upper right")
    return figure


def runtimes(result: Result, plt):
    """Rows/s against batch size per model: torch eager, onnxruntime fp32 and int8."""
    rows = result["rows"]
    towers = list(dict.fromkeys((r["model"], r["tower"]) for r in rows))
    figure, panels = _figure(plt, len(towers), result, "Inference runtimes on the CPU: torch eager against "
                             "onnxruntime fp32 and int8", width_per_panel=4.6, rows=1 if len(towers) <= 3 else 2)
    colours = {"torch": BASELINE, "fp32": OURS, "int8": "tab:green"}
    for axes, (model, tower) in zip(panels, towers):
        for r in (r for r in rows if (r["model"], r["tower"]) == (model, tower)):
            batches = sorted(int(b) for b in r["rows_per_s"])
            colour = colours["torch"] if r["runtime"].startswith("torch") else colours[r["precision"]]
            axes.plot(batches, [r["rows_per_s"][str(b)] for b in batches], marker="o", color=colour, label=r["runtime"],
                      linestyle="--" if r["runtime"].startswith("torch") else "-")
        axes.set_xscale("log", base=2)
        batches = sorted({int(b) for r in rows for b in r["rows_per_s"]})
        axes.set_xticks(batches, [str(b) for b in batches])
        axes.set(title=f"{model}: {tower.replace('_', ' ')}", xlabel="batch size", ylabel="rows / s", ylim=(0, None))
        axes.grid(alpha=0.3)
    panels[0].legend(fontsize="small")
    for axes in panels[len(towers):]:
        axes.set_visible(False)
    return figure


def index_search(result: Result, plt):
    """Recall@10 against single-query queries/s per data set: each backend and parameter a point."""
    rows = result["rows"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    figure, panels = _figure(plt, len(datasets), result, f"Index search: recall@{result.get('k', 10)} against "
                             "queries/s, one query at a time", width_per_panel=5.2, rows=1 if len(datasets) <= 2 else 2)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = dict(zip(methods, plt.get_cmap("tab10").colors))
    for axes, dataset in zip(panels, datasets):
        for method in methods:
            cells = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            if not cells:
                continue
            axes.plot([r["queries_per_s"] for r in cells], [r["recall_at_10"] for r in cells], marker="o", linestyle=":",
                      color=colours[method], label=method)
            for r in cells:
                if "(server)" in r["params"]:  # the settings the server runs with
                    axes.annotate("server", (r["queries_per_s"], r["recall_at_10"]), textcoords="offset points",
                                  xytext=(4, -10), fontsize="x-small", color=colours[method])
        axes.set_xscale("log")
        axes.set(title=dataset, xlabel="queries / s (log scale)", ylabel=f"recall@{result.get('k', 10)}", ylim=(0, 1.05))
        axes.grid(alpha=0.3)
    panels[0].legend(fontsize="small", loc="lower left")
    for axes in panels[len(datasets):]:
        axes.set_visible(False)
    return figure


def jobs(result: Result, plt):
    """Images/s of a re-embedding job, in process and on Ray, beside raw onnxruntime."""
    bars = [("raw onnxruntime\n(no job)", result["raw_onnxruntime"], BASELINE), ("job, in process", result["job"], OURS)]
    if "ray_job" in result:
        bars.append((f"job on Ray\n({result['ray_job'].get('replicas', '?')} replicas)", result["ray_job"], "tab:purple"))
    model = result.get("model", "")
    figure, (axes,) = _figure(plt, 1, result, f"Re-embedding jobs: {model}, Fashion-MNIST's 70,000 images",
                              width_per_panel=7)
    names, values = [b[0] for b in bars], [b[1]["images_per_s"] for b in bars]
    drawn = axes.bar(names, values, color=[b[2] for b in bars])
    axes.bar_label(drawn, [f"{v:,.0f}" for v in values])
    axes.set(ylabel="images / s, end to end", ylim=(0, max(values) * 1.15))
    axes.grid(alpha=0.3, axis="y")
    return figure


def word2vec_vs_gensim(result: Result, plt):
    """Training speed and quality, ours beside gensim, for skip-gram and CBOW (median, min-max bars)."""
    architectures = [a for a in ("skipgram", "cbow") if a in result]
    figure, (speed, quality) = _figure(plt, 2, result, "word2vec on GCIDE: ours against gensim")
    width = 0.38
    for side, (who, colour) in enumerate((("ours", OURS), ("gensim", PEER))):
        stats = [result[a]["summary"][who]["raw_words_per_second"] for a in architectures]
        x = [i + (side - 0.5) * width for i in range(len(architectures))]
        medians = [s["median"] / 1e6 for s in stats]
        errors = [[m - s["min"] / 1e6 for m, s in zip(medians, stats)], [s["max"] / 1e6 - m for m, s in zip(medians, stats)]]
        speed.bar(x, medians, width, yerr=errors, capsize=4, color=colour, label=who)
    speed.set_xticks(range(len(architectures)), architectures)
    speed.set(title="training speed (median of 3 runs, min-max)", ylabel="million raw words / s")
    speed.legend()
    metrics = [("analogy_total", "analogies"), ("wordsim353_spearman", "WordSim-353\nSpearman"),
               ("simlex999_spearman", "SimLex-999\nSpearman")]
    groups = [(a, key, label) for a in architectures for key, label in metrics]
    for side, (who, colour) in enumerate((("ours", OURS), ("gensim", PEER))):
        x = [i + (side - 0.5) * width for i in range(len(groups))]
        quality.bar(x, [_median(result[a]["summary"][who][key]) for a, key, _ in groups], width, color=colour, label=who)
    quality.set_xticks(range(len(groups)), [f"{label}\n{a}" for a, _, label in groups], fontsize="x-small")
    quality.set(title="quality (median of 3 runs)", ylabel="accuracy or correlation", ylim=(0, None))
    for axes in (speed, quality):
        axes.grid(alpha=0.3, axis="y")
    return figure


def vision_ssl(result: Result, plt):
    """kNN and linear-probe top-1 of each encoder: trained, at random init, and raw pixels."""
    rows = result["rows"]
    figure, (axes,) = _figure(plt, 1, result, f"SimCLR and MAE on Fashion-MNIST ({result.get('profile', '')} profile): "
                              "frozen-encoder top-1", width_per_panel=10)
    measures = [("kNN", lambda r: r["knn_top1_pct"])] + [
        (f"linear, {f} labels", lambda r, f=f: r["linear_top1_pct"][f]) for f in rows[0]["linear_top1_pct"]]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        simclr = "simclr" in row["name"]  # random-init rows name their method in brackets: a paler shade of its colour
        colour = BASELINE if row["name"] == "raw pixels" else (
            ("lightsteelblue" if simclr else "#b5dfb0") if row["name"].startswith("random") else (OURS if simclr else "tab:green"))
        x = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(measures))]
        axes.bar(x, [m(row) for _, m in measures], width, color=colour, edgecolor="white", label=row["name"])
    axes.set_xticks(range(len(measures)), [name for name, _ in measures])
    low = min(m(r) for r in rows for _, m in measures)
    axes.set(ylabel="top-1 accuracy (%)", ylim=(max(0, low - 10), 100))
    axes.legend(fontsize="small", ncol=2)
    axes.grid(alpha=0.3, axis="y")
    return figure


def zero_shot(result: Result, plt):
    """Fashion-MNIST zero-shot top-1, with and without query-bank normalisation, per class."""
    runs = result["results"]
    figure, panels = _figure(plt, len(runs), result, "CLIP zero-shot on Fashion-MNIST: top-1 per class, with and "
                             "without query-bank normalisation", width_per_panel=6.5)
    for axes, (name, run) in zip(panels, runs.items()):
        held_out = set(run.get("held_out_classes") or [])
        by_norm = run["fashion_mnist"]
        classes = list(next(iter(by_norm.values()))["per_class_top1"])
        width = 0.4
        for side, (norm, colour) in enumerate((("querybank", OURS), ("none", BASELINE))):
            if norm not in by_norm:
                continue
            x = [i + (side - 0.5) * width for i in range(len(classes))]
            total = by_norm[norm]["fashion_mnist_top1"]
            axes.bar(x, [by_norm[norm]["per_class_top1"][c] for c in classes], width, color=colour,
                     label=f"{'query-bank normalised' if norm == 'querybank' else 'plain cosine'} (all: {total:.2f})")
        axes.axhline(1 / len(classes), color="black", linestyle=":", linewidth=1, label="chance")
        axes.set_xticks(range(len(classes)), [f"{c}\n(held out)" if c in held_out else c for c in classes],
                        rotation=45, ha="right", fontsize="small")
        title = "all classes trained" if not held_out else f"open vocabulary: {', '.join(sorted(held_out))} never seen in training"
        axes.set(title=title, ylabel="top-1 accuracy", ylim=(0, 1.25), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
        axes.legend(fontsize="x-small", loc="upper center", ncol=3)
    return figure


def scores(result: Result, plt):
    """The median cosine of a query's k-th neighbour against k, before and after centring (image encoders)."""
    encoders = result["image_encoders"]
    figure, (axes,) = _figure(plt, 1, result, "What a score means: the k-th neighbour's cosine, before and after "
                              "export's centring and whitening", width_per_panel=8)
    for (checkpoint, run), colour in zip(encoders.items(), (OURS, "tab:green", "tab:purple")):
        method = run["after"].get("method") or Path(checkpoint).stem
        for stage, dash in (("before", "--"), ("after", "-")):
            ranks = sorted(int(k) for k in run[stage]["median_scores"])
            axes.plot(ranks, [run[stage]["median_scores"][str(k)] for k in ranks], color=colour, linestyle=dash, marker="o",
                      label=f"{method}, {'raw' if stage == 'before' else 'centred'} (kNN top-1 {run[stage]['knn_top1_pct']:.1f}%)")
    axes.set_xscale("log")
    axes.set(xlabel="neighbour rank k (log scale)", ylabel="median cosine of the k-th neighbour", ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def own_images(result: Result, plt):
    """Held-out top-1 on Open Clip Art: SimCLR's kNN beside raw pixels and random init, CLIP's zero-shot beside chance."""
    simclr, clip, asked = result["simclr"], result["clip"], result["targets"]["asked"]
    figure, (left, right) = _figure(plt, 2, result, f"Training on your own images ({', '.join(result['data']['categories'])}; "
                                    f"{result['data']['images']} distinct images, colour)")
    bars = [("raw pixels", simclr["raw_pixels_knn_top1_pct"], BASELINE),
            ("random-init\nResNet", simclr["random_init_knn_top1_pct"], "lightsteelblue"),
            ("SimCLR", simclr["trained_knn_top1_pct"], OURS)]
    left.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    left.axhline(simclr["raw_pixels_knn_top1_pct"] + asked["simclr_points_over_raw_pixels"], color="black", linestyle=":",
                 label=f"target: raw pixels + {asked['simclr_points_over_raw_pixels']:.0f} points")
    left.set(title=f"SimCLR: kNN top-1 on {simclr['held_out_images']} held-out images", ylabel="top-1 (%)", ylim=(0, 100))
    right.bar(["chance", "CLIP zero-shot"], [clip["chance_pct"], clip["zero_shot_top1_pct"]], color=[BASELINE, OURS])
    right.axhline(clip["chance_pct"] * asked["zero_shot_times_chance"], color="black", linestyle=":",
                  label=f"target: {asked['zero_shot_times_chance']}x chance")
    right.set(title=f"CLIP: zero-shot top-1 on {clip['held_out_images']} held-out images", ylabel="top-1 (%)", ylim=(0, 100))
    for axes in (left, right):
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3, axis="y")
    return figure


def _median(value: Any) -> float:
    return value["median"] if isinstance(value, dict) else value


CHARTS: dict[str, Callable[[Result, Any], Any]] = {f.__name__: f for f in (
    serve_images, text_vs_infinity, images_vs_infinity, soak, runtimes, index_search, jobs, word2vec_vs_gensim, vision_ssl,
    zero_shot, scores, own_images)}


def bench_name(path: Path, result: Result) -> str | None:
    """Which bench wrote `result`: its own "benchmark" (or "bench") field, else the file name
    (serve_images_mae.json is serve_images's)."""
    named = result.get("benchmark") or result.get("bench")
    if named in CHARTS:
        return named
    return next((n for n in sorted(CHARTS, key=len, reverse=True) if path.stem == n or path.stem.startswith(n + "_")), None)


def draw_chart(result: Result, name: str, out: Path | str) -> Path:
    """Draw bench `name`'s chart of `result` as a PNG at `out`; PlotDependencyError without matplotlib."""
    if name not in CHARTS:
        raise ValueError(f"no chart for bench {name!r}; known: {', '.join(sorted(CHARTS))}")
    plt = pyplot()
    figure = CHARTS[name](result, plt)
    figure.tight_layout()
    return save_figure(figure, out)


def write_chart(results_path: Path | str) -> Path | None:
    """The chart of the result JSON at `results_path`, written beside it (<name>.png); what each bench
    calls after writing its JSON. Never raises: the measurements are already saved, and a missing
    matplotlib or a result without the fields a chart reads is logged, returning None."""
    path = Path(results_path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        name = bench_name(path, result)
        if name is None:
            raise ValueError(f"no chart knows {path.name}")
        out = draw_chart(result, name, path.with_suffix(".png"))
    except PlotDependencyError as e:
        print(f"no chart: {e}", file=sys.stderr)
        return None
    except Exception as e:  # noqa: BLE001 - a chart must not cost a finished benchmark its run
        print(f"no chart of {path}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="result JSON files (default: every bench/results/*.json)")
    args = parser.parse_args(argv)
    written = [write_chart(p) for p in (args.results or sorted(RESULTS.glob("*.json")))]
    return [p for p in written if p is not None]


if __name__ == "__main__":
    main()
