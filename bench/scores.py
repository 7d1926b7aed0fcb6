"""Benchmark: what a similarity score means before and after export centres and whitens image
encoders (issue 16). For each SimCLR/MAE checkpoint, export it twice (raw, as bundles were before,
and centred), build the Fashion-MNIST test index with each through the inference core the server
uses, query it by id, and score kNN top-1 on the served vectors. For a CLIP checkpoint, measure
zero-shot top-1, text->image recall and the score spread with no centring, one mean per tower and
an image mean only, to decide what its export does.

Prints one table and writes it, with the machine and date, to bench/results/scores.json.

    python bench/scores.py --checkpoint artifacts/checkpoints/simclr-fmnist.pt \\
        --checkpoint artifacts/checkpoints/mae-fmnist.pt --clip-checkpoint artifacts/checkpoints/clip-fmnist.pt
    python bench/scores.py --smoke      # tiny SimCLR and CLIP models trained two steps (vision_ssl's and zero_shot's): seconds
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.report import SMOKE_HELP, result_path, utc_now, write_report  # noqa: E402
from bench.serve_images import fashion_mnist_folder  # noqa: E402
from embedserve.machine import machine_info  # noqa: E402
from export.image_encoder import CENTERING_IMAGES, export_image_encoder  # noqa: E402
from index.build import build_image_index  # noqa: E402
from index.vector_index import open_index  # noqa: E402
from runtime.bundle import Bundle  # noqa: E402
from runtime.encoders.factory import load_encoder  # noqa: E402
from runtime.preprocessing import preprocess_batch  # noqa: E402
from runtime.sources import to_pil  # noqa: E402
from runtime.vectors import unit_rows  # noqa: E402
from training.data.images import load_image_arrays, random_subset  # noqa: E402
from training.evaluation.knn import knn_accuracy  # noqa: E402
from training.evaluation.linear_probe import linear_probe  # noqa: E402

RANKS = (1, 2, 10, 100, 1000)  # rank 1 of a query by id is the item itself
INDEX_SOURCE = "fashion-mnist:test"
SMOKE_CENTERING_IMAGES = 256  # --smoke: the training images a centring mean comes from
SMOKE_INDEX_IMAGES = 1000  # --smoke: the test images indexed and ranked (at least the largest of RANKS)


def bundle_embeddings(bundle: Bundle, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """uint8 images (N, H, W) -> unit embeddings (N, D) through the bundle's ONNX model, as served."""
    encoder = load_encoder(bundle, role="image_encoder")
    try:
        out = [encoder.encode(preprocess_batch([to_pil(im) for im in images[s:s + batch_size]], bundle.manifest.preprocessing))
               for s in range(0, len(images), batch_size)]
    finally:
        encoder.close()
    return unit_rows(np.concatenate(out))


def score_ranks(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Scores (Q, len(RANKS)) at RANKS of each query row's ranking of `vectors` (N, D), unit rows."""
    ranked = -np.sort(-(vectors[queries] @ vectors.T), axis=1)  # (Q, N)
    return ranked[:, [r - 1 for r in RANKS]]


def image_encoder_rows(checkpoint: str, work: Path, query_id: int, queries: int, knn_train: int | None,
                       linear: bool = False, variants: bool = True, centering_images: int = CENTERING_IMAGES,
                       index_images: int | None = None) -> dict:
    """Before/after figures of one SimCLR or MAE checkpoint; `variants`: export its int8 and fp16
    copies too, as `embedserve export` does (a smoke run leaves them out: quantising and scoring
    them is most of an export's time); `index_images`: index only the first test images, as a
    folder (None: the whole test split)."""
    train = load_image_arrays("fashion-mnist", "train")
    keep = random_subset(len(train[0]), knn_train, 0)
    train = train if keep is None else (train[0][keep], train[1][keep])
    test_labels = load_image_arrays("fashion-mnist", "test")[1][:index_images]
    source = INDEX_SOURCE if index_images is None else fashion_mnist_folder("test", index_images, work / "test-images")
    sample = np.random.default_rng(0).choice(len(test_labels), queries, replace=False)
    out = {}
    for variant, images in (("before", 0), ("after", centering_images)):
        artifacts = work / variant
        bundle = export_image_encoder(checkpoint, artifacts, "model", centering_images=images, int8=variants, fp16=variants)
        build_image_index(artifacts, "fashion-mnist-test", "model", source, progress=False)
        index = open_index(artifacts, "fashion-mnist-test")
        scores, ids = index.search(index.vector(query_id)[None, :], max(RANKS))  # what POST /search {"id": ...} ranks
        served = np.stack([index.vector(i) for i in range(len(test_labels))])  # (N, D) the index's unit vectors
        ranks = score_ranks(served, sample)  # (Q, len(RANKS))
        out[variant] = {
            "method": bundle.manifest.method,
            "query_id": query_id,
            "query_scores": {r: round(float(scores[0, r - 1]), 4) for r in RANKS},
            "query_top10_same_class": int((test_labels[ids[0, :10]] == test_labels[query_id]).sum()),
            "median_scores": {r: round(float(np.median(ranks[:, i])), 4) for i, r in enumerate(RANKS)},
            "share_rank10_above_0.8": round(float((ranks[:, RANKS.index(10)] > 0.8).mean()), 3),
            "share_rank1000_at_most_0.5": round(float((ranks[:, RANKS.index(1000)] <= 0.5).mean()), 3),
        }
        train_x = bundle_embeddings(bundle, train[0])  # (N_train, D)
        out[variant]["knn_top1_pct"] = round(knn_accuracy(train_x, train[1], served, test_labels), 2)
        if linear:  # minutes per fit on a loaded 2-core machine at 60k images
            out[variant]["linear_top1_pct"] = linear_probe(train_x, train[1], served, test_labels, (0.1, 1.0))
    return out


def clip_rows(checkpoint: str, texts: int = 2048, retrieval_size: int = 1000, seed: int = 0, test_images: int | None = None,
              mean_images: int = CENTERING_IMAGES) -> dict:
    """Zero-shot top-1 (plain cosines), text->image recall and score ranks of a CLIP model with its
    towers' outputs left as trained, each centred on its own training mean, or only the images centred."""
    import torch  # only the CLIP part runs torch: its towers are compared before any export

    from index.class_matrix import build_class_matrix, classify
    from runtime.templates import EVAL_TEMPLATES, TRAIN_TEMPLATES
    from training.data.captions import FASHION_MNIST_CLASS_NAMES, fashion_mnist_caption
    from training.data.transforms import EvalTransform
    from training.methods.clip import load_clip_towers, query_bank_embeddings, text_encoder_fn, tower_embeddings

    image_tower, text_tower, info = load_clip_towers(checkpoint)
    encode_texts = text_encoder_fn(text_tower, info.tokenizer_json)
    transform = EvalTransform.from_spec(info.preprocessing)
    images, labels = load_image_arrays("fashion-mnist", "test", info.config.get("data_root"))
    images, labels = images[:test_images], labels[:test_images]  # None: all 10,000
    test = tower_embeddings(image_tower, torch.stack([transform(to_pil(im)) for im in images]))  # (10000, dim)
    image_mean = query_bank_embeddings(image_tower, info, mean_images, seed).mean(axis=0)  # training images
    rng = random.Random(seed)
    train_captions = [fashion_mnist_caption(rng.randrange(10), rng, TRAIN_TEMPLATES) for _ in range(texts)]
    text_mean = encode_texts(train_captions).mean(axis=0)  # training-style captions
    subset = np.sort(np.random.default_rng(seed).choice(len(images), retrieval_size, replace=False))
    caption_rng = random.Random(seed)
    captions = [fashion_mnist_caption(int(labels[i]), caption_rng, EVAL_TEMPLATES, kind_prob=0.0) for i in subset]
    caption_embeddings = encode_texts(captions)
    queries = np.random.default_rng(0).choice(len(images), 200, replace=False)
    out = {}
    for variant, (mi, mt) in {"none": (None, None), "per-tower mean": (image_mean, text_mean),
                              "image mean only": (image_mean, None)}.items():
        def centred_images(x: np.ndarray) -> np.ndarray:
            return x if mi is None else unit_rows(x - mi)

        def centred_texts(batch: list[str]) -> np.ndarray:
            t = encode_texts(batch)
            return t if mt is None else unit_rows(t - mt)

        x = centred_images(test)
        class_matrix = build_class_matrix(centred_texts, FASHION_MNIST_CLASS_NAMES, EVAL_TEMPLATES)  # (10, dim)
        top1 = float((classify(x, class_matrix, info.logit_scale).argmax(1) == labels).mean())
        t = caption_embeddings if mt is None else unit_rows(caption_embeddings - mt)
        order = np.argsort(-(t @ x[subset].T), axis=1)[:, :10]  # (Q, 10): text queries over images
        hits = labels[subset][order] == labels[subset][:, None]
        ranks = score_ranks(x, queries)
        out[variant] = {"zero_shot_top1": round(top1, 4),
                        "text_to_image_recall": {k: round(float(hits[:, :k].any(1).mean()), 4) for k in (1, 5, 10)},
                        "median_scores": {r: round(float(np.median(ranks[:, i])), 4) for i, r in enumerate(RANKS)}}
    return out


def smoke_checkpoints(folder: Path) -> tuple[str, str]:
    """A tiny SimCLR and a tiny CLIP checkpoint under `folder`, trained two steps each with the
    smoke configurations of bench/vision_ssl.py and bench/zero_shot.py."""
    from dataclasses import replace

    from bench.vision_ssl import PROFILES
    from bench.zero_shot import SMOKE_CONFIG
    from training.methods.clip import ClipConfig, train_clip
    from training.methods.simclr import train_simclr

    simclr = replace(PROFILES["smoke"]["simclr"], checkpoint_path=str(folder / "simclr.pt"), log_path=str(folder / "simclr.jsonl"))
    train_simclr(simclr)
    clip = ClipConfig.quick(checkpoint_path=str(folder / "clip.pt"), log_path=str(folder / "clip.jsonl"), **SMOKE_CONFIG)
    train_clip(clip)
    return simclr.checkpoint_path, clip.checkpoint_path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], help="a SimCLR or MAE checkpoint (repeatable)")
    parser.add_argument("--clip-checkpoint", help="a CLIP checkpoint, for the centring decision of its towers")
    parser.add_argument("--query-id", type=int, default=0, help="the id queried, as POST /search {\"id\": 0} does")
    parser.add_argument("--queries", type=int, default=500, help="random test images whose median scores are reported")
    parser.add_argument("--knn-train", type=int, default=10_000, help="training images the kNN votes over (0: all 60k)")
    parser.add_argument("--linear-probe", action="store_true", help="also a linear probe at 10%% and 100%% of the labels")
    parser.add_argument("--smoke", action="store_true",
                        help=SMOKE_HELP + "; trains its own two checkpoints, 50 queries, kNN over 1000 training images")
    parser.add_argument("--out", help="default: bench/results/scores.json")
    args = parser.parse_args(argv)
    args.out = result_path(args.out, "scores", args.smoke)

    results: dict = {"machine": machine_info("onnxruntime", "faiss-cpu", "torch"),
                     "date": utc_now(),
                     "centering_images": CENTERING_IMAGES, "knn_train": args.knn_train or 60_000, "knn_test": 10_000,
                     "image_encoders": {}, "clip": None, "smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="embedserve-scores-") as scratch:
        if args.smoke:
            simclr, args.clip_checkpoint = smoke_checkpoints(Path(scratch) / "checkpoints")
            args.checkpoint, args.queries, args.knn_train, args.linear_probe = [simclr], 50, 1000, False
            results |= {"centering_images": SMOKE_CENTERING_IMAGES, "knn_train": args.knn_train, "knn_test": SMOKE_INDEX_IMAGES}
        for n, checkpoint in enumerate(args.checkpoint):
            results["image_encoders"][checkpoint] = image_encoder_rows(
                checkpoint, Path(scratch) / str(n), args.query_id, args.queries, args.knn_train or None, args.linear_probe,
                variants=not args.smoke, centering_images=SMOKE_CENTERING_IMAGES if args.smoke else CENTERING_IMAGES,
                index_images=SMOKE_INDEX_IMAGES if args.smoke else None)
        if args.clip_checkpoint:
            sizes = {"texts": 256, "retrieval_size": 100, "test_images": SMOKE_INDEX_IMAGES,
                     "mean_images": SMOKE_CENTERING_IMAGES} if args.smoke else {}
            results["clip"] = {args.clip_checkpoint: clip_rows(args.clip_checkpoint, **sizes)}
    results["machine"]["load_average_at_end"] = machine_info()["load_average_1_5_15min"]

    header = (f"{'model':<24} {'variant':<16} {'id ' + str(args.query_id) + ' @1/2/10/100/1000':<34} "
              f"{'median @2/10/100/1000':<28} {'kNN top1':>8}" + (f" {'lin 10%':>8} {'lin 100%':>8}" if args.linear_probe else ""))
    lines = [header, "-" * len(header)]
    for checkpoint, variants in results["image_encoders"].items():
        for variant, r in variants.items():
            q, m = r["query_scores"], r["median_scores"]
            lines.append(f"{Path(checkpoint).stem:<24} {variant:<16} {' / '.join(f'{q[k]:.3f}' for k in RANKS):<34} "
                         f"{' / '.join(f'{m[k]:.3f}' for k in RANKS[1:]):<28} {r['knn_top1_pct']:>8.2f} "
                         + " ".join(f"{v:>8.2f}" for v in r.get("linear_top1_pct", {}).values()))
    for checkpoint, variants in (results["clip"] or {}).items():
        lines += ["", f"{'CLIP ' + Path(checkpoint).stem:<24} {'centring':<16} {'zero-shot':>9} {'t->i R@1/5/10':<22} "
                      "median @2/10/100/1000"]
        for variant, r in variants.items():
            rec, m = r["text_to_image_recall"], r["median_scores"]
            lines.append(f"{'':<24} {variant:<16} {r['zero_shot_top1']:>9.3f} "
                         f"{' / '.join(f'{rec[k]:.3f}' for k in (1, 5, 10)):<22} {' / '.join(f'{m[k]:.3f}' for k in RANKS[1:])}")
    print("\n".join(lines))
    write_report(args.out, results)
    return results


if __name__ == "__main__":
    main()
