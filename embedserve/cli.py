"""`embedserve`: train, export, index, plot, serve, bench and demo from one command.

The CLI parses, builds a config and calls a library function (embedserve/pipelines.py and the
layers' own modules). Only the subcommands that need torch import it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import TYPE_CHECKING

from embedserve.config_args import add_config_arguments, config_from_args
from embedserve.settings_args import add_settings_arguments, settings_environment

if TYPE_CHECKING:  # imported inside the commands that use them, so that the others start fast
    from index.store import IndexStore
    from serving.settings import Settings

DEFAULT_ARTIFACTS = Path("artifacts")
ARTIFACTS_HELP = "folder of models/, indexes/, checkpoints/ (default: ./artifacts)"


def _train_word2vec(args: argparse.Namespace) -> None:
    from embedserve.pipelines import curves_note, train_word2vec_bundle
    from training.methods.word2vec import Word2VecConfig

    base = Word2VecConfig.quick(*[args.corpus] if args.corpus else []) if args.quick else None  # GCIDE by default
    config = config_from_args(Word2VecConfig, args, base)
    bundle = train_word2vec_bundle(config, args.artifacts, args.name, args.checkpoint, args.resume)
    print(f"wrote {bundle.path}  metrics: {bundle.manifest.metrics}")
    if note := curves_note(bundle):
        print(note)


def _train_torch_method(args: argparse.Namespace) -> None:
    from embedserve.pipelines import config_class, curves_note, train_and_export

    cls = config_class(args.method)
    config = config_from_args(cls, args, cls.quick() if args.quick else None)
    bundle = train_and_export(args.method, config, args.artifacts, args.name or args.method, args.resume)
    print(f"wrote {bundle.path}  metrics: {bundle.manifest.metrics}")
    if note := curves_note(bundle):
        print(note)


def _export(args: argparse.Namespace) -> None:
    from embedserve.pipelines import curves_note, export_checkpoint

    bundle = export_checkpoint(args.checkpoint, args.artifacts, args.name, fp16=args.fp16, triton=args.triton,
                               triton_backend=args.triton_backend)
    print(f"wrote {bundle.path}")
    if note := curves_note(bundle):
        print(note)


def _import_clip(args: argparse.Namespace) -> None:
    from export.clip_import import import_clip

    bundle = import_clip(args.folder, args.artifacts, args.name, version=args.version, int8=args.int8, fp16=args.fp16,
                         query_bank=args.query_bank)
    manifest = bundle.manifest
    cosine, pixels = manifest.extra["parity_min_cosine"], manifest.extra["preprocessing_parity"] or {}
    print(f"wrote {bundle.path}  (lowest cosine to {manifest.training_config['source']}: text {cosine['text_encoder']:.6f}, "
          f"image {cosine['image_encoder']:.6f}; preprocessing: image cosine >= {pixels.get('min_cosine')}, "
          f"largest pixel difference {pixels.get('max_pixel_difference')} levels)")
    for v in manifest.variants:
        print(f"  {v.role} {v.precision} copy ({v.technique}): mean cosine to fp32 {v.mean_cosine:.4f}, lowest {v.min_cosine:.4f}")


def _import_sentence_transformers(args: argparse.Namespace) -> None:
    from export.sentence_transformers import import_sentence_transformer

    bundle = import_sentence_transformer(args.folder, args.artifacts, args.name, version=args.version,
                                         int8=args.int8, fp16=args.fp16)
    cosine = bundle.manifest.extra["parity_min_cosine"]["text_encoder"]
    print(f"wrote {bundle.path}  (lowest cosine to sentence-transformers: {cosine:.6f})")
    for v in bundle.manifest.variants:
        print(f"  {v.precision} copy ({v.technique}): mean cosine to fp32 {v.mean_cosine:.4f}, lowest {v.min_cosine:.4f}")


def _index_store(settings: Settings) -> AbstractContextManager[IndexStore]:
    """The index store the server's settings name (FAISS folders or Milvus), closed when the `with` ends."""
    from index.store import open_index_store

    return closing(open_index_store(settings.artifacts_dir, settings.index_config()))


def _index_build(args: argparse.Namespace) -> None:
    from index.build import build_image_index
    from serving.settings import Settings

    # The server's settings: the index lands where it will be served (FAISS files or Milvus), and its
    # images embed at the precision and within the limits the server's queries use, read under its data
    # roots where it names some (so that its thumbnails can read them again)
    settings = Settings(artifacts_dir=args.artifacts)
    with _index_store(settings) as indexes:
        built = build_image_index(args.artifacts, args.name, args.model, args.source, batch_size=args.batch_size,
                                  limit=args.limit, kind=args.kind, runtime=settings.runtime_config(),
                                  limits=settings.image_limits(), indexes=indexes,
                                  roots=settings.data_root_paths() or None)
    print(f"wrote index {args.name} version {built.version} ({settings.index_backend}), now its current version: "
          f"{built.indexed} images indexed, {len(built.skipped)} skipped")
    shown = 5  # the first few reasons; the count says how many more
    for reason in list(built.skipped.values())[:shown]:
        print(f"  skipped {reason}")
    if len(built.skipped) > shown:
        print(f"  ... and {len(built.skipped) - shown} more")


def _jobs_run(args: argparse.Namespace) -> None:
    from jobs.run import run_job
    from jobs.store import JobSpec, JobStore
    from serving.settings import Settings

    spec = JobSpec(source=args.source, model=args.model, index=args.index, model_version=args.model_version,
                   batch_size=args.batch_size)
    store = JobStore(args.artifacts)
    status = store.create(spec) if args.resume is None else store.get(args.resume)
    print(f"job {status.id}: {spec.source} with {spec.model} into index {spec.index}", flush=True)
    ray = None
    if args.ray:
        from jobs.ray_runner import RayConfig

        ray = RayConfig(address=args.ray, replicas=args.ray_replicas, gpus_per_replica=args.ray_gpus_per_replica,
                        ship_bundle=args.ray_ship_bundle)
    # The same settings as the server's jobs: where indexes live (FAISS or Milvus), which precision runs, and
    # the data roots paths must lie under where it names some
    settings = Settings(artifacts_dir=args.artifacts)
    with _index_store(settings) as indexes:
        status = run_job(status.id, store, args.artifacts, settings.runtime_config(), settings.image_limits(),
                         roots=settings.data_root_paths() or None, progress=True, ray=ray, indexes=indexes)
    print(json.dumps(status.to_dict(), indent=2))
    if status.state != "succeeded":
        raise ValueError(f"job {status.id} {status.state}: {status.error}")


def _plot_index(args: argparse.Namespace) -> None:
    from index.plot import IndexMapConfig, plot_index_map
    from serving.settings import Settings

    config = IndexMapConfig(method=args.method, color_by=args.color_by, max_points=args.max_points, seed=args.seed)
    # the server's settings say where indexes live (FAISS folders or Milvus), as for `jobs run`
    with _index_store(Settings(artifacts_dir=args.artifacts)) as indexes:
        path = plot_index_map(indexes.open(args.name, args.version),
                              args.out or args.artifacts / "plots" / f"{args.name}-{args.method}.png", config)
    print(f"wrote {path}")


def _plot_curves(args: argparse.Namespace) -> None:
    from training.curves import plot_curves

    print(f"wrote {plot_curves(args.log, args.out)}")


def _jobs_client(args: argparse.Namespace) -> None:
    """list, show and cancel: the server's jobs, over its HTTP API."""
    import urllib.error
    import urllib.request

    import urllib.parse

    if args.action == "list":
        path, method = "/jobs", "GET"
    else:
        path, method = f"/jobs/{urllib.parse.quote(args.id, safe='')}", "DELETE" if args.action == "cancel" else "GET"
    url = args.url or _settings_url()
    try:
        with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + path, method=method), timeout=30) as r:
            print(json.dumps(json.loads(r.read()), indent=2))
    except urllib.error.HTTPError as e:
        raise ValueError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None
    except urllib.error.URLError as e:
        raise FileNotFoundError(f"no server at {url} ({e.reason}); start one with `embedserve serve`, "
                                "or name it with --url") from None


def _settings_url() -> str:
    """The address `embedserve serve` binds with the settings of this environment (EMBEDSERVE_HOST,
    EMBEDSERVE_PORT), as a client reaches it: a server on every interface answers on loopback."""
    from serving.settings import Settings

    settings = Settings()
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


def _serve(args: argparse.Namespace) -> None:
    from serving.security import check_exposure
    from serving.server import serve
    from serving.settings import Settings

    # Options win over the environment; they go into it because every worker process builds
    # its app (and reads its settings) on its own.
    os.environ.update(settings_environment(args))
    settings = Settings()
    check_exposure(settings)  # here, so that the refusal is one line rather than each worker's traceback
    serve(settings)


def _bench(args: argparse.Namespace) -> None:
    script = Path("bench") / f"{args.name}.py"
    if not script.is_file():
        available = sorted(p.stem for p in Path("bench").glob("*.py"))
        raise SystemExit(f"no benchmark {args.name!r} in ./bench; available: {', '.join(available) or 'none'}")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")


def _demo(args: argparse.Namespace) -> None:
    from embedserve.demo import run_demo

    run_demo(args.artifacts, serve=not args.no_serve, host=args.host, port=args.port)


def _add_train_commands(train) -> None:
    from training.methods.word2vec import Word2VecConfig

    w2v = train.add_parser("word2vec", help="skip-gram or CBOW word vectors from a text corpus")
    w2v.add_argument("--name", default="words", help="bundle name to export as (default: words)")
    w2v.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    w2v.add_argument("--checkpoint", type=Path, help="checkpoint path (default: <artifacts>/checkpoints/<name>.pt)")
    w2v.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    w2v.add_argument("--quick", action="store_true", help="start from the quick demo profile (GCIDE)")
    # the config's own field, declared here for its default's help; config_from_args reads it
    w2v.add_argument("--log-path", metavar="PATH",
                     help="JSON-lines metrics log, appended to, its curves drawn beside it as a PNG and copied into "
                          "the bundle (default: <artifacts>/logs/<name>.jsonl)")
    add_config_arguments(w2v, Word2VecConfig, skip=("log_path",))
    w2v.set_defaults(func=_train_word2vec)

    from embedserve.pipelines import config_class

    for method, about in (
        ("simclr", "SimCLR: a contrastive ResNet image encoder (Fashion-MNIST or an image folder)"),
        ("mae", "MAE: a masked-autoencoder ViT image encoder (Fashion-MNIST or an image folder)"),
        ("clip", "CLIP-style image-text model (Fashion-MNIST captions, a manifest or WebDataset shards)"),
    ):
        command = train.add_parser(method, help=about)
        command.add_argument("--name", help=f"bundle name to export as (default: {method})")
        command.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
        command.add_argument("--resume", action="store_true", help="continue from the checkpoint")
        command.add_argument("--quick", action="store_true", help="start from the quick CPU profile")
        add_config_arguments(command, config_class(method), skip=("checkpoint_path", "log_path"))
        command.set_defaults(func=_train_torch_method)


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser(with_train_options: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedserve", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an encoder: word2vec, simclr, mae or clip (`embedserve train -h`)")
    if with_train_options:  # the method configs import torch, which serve and demo -h must not pay for
        _add_train_commands(train.add_subparsers(dest="method", required=True))

    export = commands.add_parser("export", help="export a checkpoint as a bundle")
    export.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint `embedserve train` wrote")
    export.add_argument("--name", required=True, help="bundle (model) name")
    export.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    export.add_argument("--fp16", action="store_true", help="also write an fp16 copy of ONNX models")
    export.add_argument("--triton", action="store_true",
                        help="also write its models into the Triton repository <artifacts>/triton (image encoders, CLIP)")
    export.add_argument("--triton-backend", choices=("onnxruntime", "python"), default="onnxruntime",
                        help="what runs the ONNX models in Triton: its onnxruntime backend (full Triton images; the "
                             "default), or onnxruntime inside its Python backend (builds without it, e.g. nvidia-pytriton's)")
    export.set_defaults(func=_export)

    imports = commands.add_parser("import", help="turn a model another library saved into a bundle")
    libraries = imports.add_subparsers(dest="library", required=True)
    st = libraries.add_parser(
        "sentence-transformers", help="a local sentence-transformers folder -> a text-encoder bundle (ONNX, parity-checked)")
    st.add_argument("folder", type=Path, help="the folder with modules.json, config.json, model.safetensors, tokenizer.json")
    st.add_argument("--name", required=True, help="bundle (model) name, as clients will ask for it")
    st.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    st.add_argument("--version", help="bundle version (default: the next vN)")
    st.add_argument("--no-int8", dest="int8", action="store_false", help="write no int8 copy (written by default, for CPUs)")
    st.add_argument("--fp16", action="store_true", help="also write an fp16 copy, for GPUs")
    st.set_defaults(func=_import_sentence_transformers)
    clip = libraries.add_parser(
        "clip", help="a Hugging Face CLIPModel folder or an open_clip folder -> a CLIP bundle (ONNX, parity-checked)")
    clip.add_argument("folder", type=Path, help="a CLIPModel folder (config.json, model.safetensors, preprocessor_config.json, "
                                                "tokenizer.json) or an open_clip one (open_clip_config.json, open_clip_model.safetensors)")
    clip.add_argument("--name", required=True, help="bundle (model) name, as clients will ask for it")
    clip.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    clip.add_argument("--version", help="bundle version (default: the next vN)")
    clip.add_argument("--no-int8", dest="int8", action="store_false", help="write no int8 copies (written by default, for CPUs)")
    clip.add_argument("--fp16", action="store_true", help="also write fp16 copies, for GPUs")
    clip.add_argument("--query-bank", type=Path, help="an image folder whose embeddings become the zero-shot query bank "
                                                      "(normalization querybank); without it zero-shot is not normalised")
    clip.set_defaults(func=_import_clip)

    index = commands.add_parser("index", help="build FAISS indexes").add_subparsers(dest="action", required=True)
    build = index.add_parser("build", help="embed a folder or data set with an image model into a named index")
    build.add_argument("--name", required=True, help="index name")
    build.add_argument("--model", required=True, help="image-encoder bundle to embed with (its current version)")
    build.add_argument("--source", required=True, help="an image folder, or fashion-mnist:test / fashion-mnist:train")
    build.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    build.add_argument("--batch-size", type=_positive, default=256, help="images per model call (default: 256)")
    build.add_argument("--limit", type=_positive, help="index only the first N images")
    build.add_argument("--kind", choices=["flat", "hnsw", "ivfpq"], help="FAISS index type (default: by size)")
    build.set_defaults(func=_index_build)

    plot = commands.add_parser("plot", help="pictures as PNGs: a 2-D map of an index, or a training log's curves")
    plots = plot.add_subparsers(dest="what", required=True)
    index_map = plots.add_parser("index", help="a t-SNE or UMAP map of an index's vectors, coloured by class")
    index_map.add_argument("name", help="the index to draw (its current version unless --version)")
    index_map.add_argument("--version", help="an index version (default: the current one)")
    index_map.add_argument("--out", type=Path, help="the PNG to write (default: <artifacts>/plots/<name>-<method>.png)")
    index_map.add_argument("--method", choices=("tsne", "umap"), default="tsne",
                           help="the layout: t-SNE (scikit-learn) or UMAP (umap-learn) (default: tsne)")
    index_map.add_argument("--color-by", metavar="FIELD",
                           help="metadata field to colour by (default: class, label or category, whichever the items have)")
    index_map.add_argument("--max-points", type=_positive, default=5000,
                           help="draw a seeded random sample of at most N vectors, which bounds the time (default: 5000)")
    index_map.add_argument("--seed", type=int, default=0, help="which sample, and the layout's start (default: 0)")
    index_map.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    index_map.set_defaults(func=_plot_index)
    curves = plots.add_parser("curves", help="redraw the training curves of a JSON-lines training log")
    curves.add_argument("log", type=Path, help="the log `embedserve train` wrote, e.g. artifacts/logs/simclr.jsonl")
    curves.add_argument("--out", type=Path, help="the PNG to write (default: beside the log, <log name>.png)")
    curves.set_defaults(func=_plot_curves)

    jobs = commands.add_parser("jobs", help="batch re-embedding jobs: run one here, or list/show/cancel a server's")
    jobs_actions = jobs.add_subparsers(dest="action", required=True)
    run = jobs_actions.add_parser("run", help="re-embed a source into a new version of an index, in the foreground")
    run.add_argument("--source", required=True,
                     help="fashion-mnist:train|test, an image folder, a .csv/.jsonl manifest, or index:<name>")
    run.add_argument("--model", required=True, help="the image model (bundle name) to embed with")
    run.add_argument("--index", required=True, help="the index to write a new version of (made current)")
    run.add_argument("--model-version", help="the bundle version (default: the model's current one)")
    run.add_argument("--batch-size", type=_positive, default=256, help="items per model call (default: 256)")
    run.add_argument("--resume", metavar="JOB_ID", help="resume this job where it stopped instead of starting one")
    run.add_argument("--ray", metavar="ADDRESS", default=os.environ.get("EMBEDSERVE_RAY_ADDRESS") or None,
                     help="run it on Ray Data: local (an in-process Ray), auto, or ray://host:10001 "
                          "(default: $EMBEDSERVE_RAY_ADDRESS; unset: in this process)")
    run.add_argument("--ray-replicas", type=_positive, default=1, help="model replicas (Ray actors) embedding (default: 1)")
    run.add_argument("--ray-gpus-per-replica", type=float, default=0.0, help="GPUs each replica reserves (default: 0)")
    run.add_argument("--ray-ship-bundle", action="store_true",
                     help="send the model bundle with the job instead of reading it at the same path on every worker")
    run.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    run.set_defaults(func=_jobs_run)
    for action, about in (("list", "every job of a server"), ("show", "one job's progress"), ("cancel", "cancel a job")):
        client = jobs_actions.add_parser(action, help=about)
        if action != "list":
            client.add_argument("id", help="the job id POST /jobs answered")
        client.add_argument("--url", help="the server (default: the address `embedserve serve` binds with these "
                                           "settings, $EMBEDSERVE_HOST and $EMBEDSERVE_PORT; unset: http://127.0.0.1:8000)")
        client.set_defaults(func=_jobs_client)

    serve = commands.add_parser("serve", help="serve every bundle under the artifacts folder (no torch)",
                                usage="%(prog)s [-h] [--SETTING VALUE ...]", description="Serve every bundle under the artifacts folder. Every setting is an option "
                                            "and an environment variable (docs/configuration.md).")
    add_settings_arguments(serve)
    serve.set_defaults(func=_serve)

    bench = commands.add_parser("bench", help="run bench/<name>.py with the remaining arguments")
    bench.add_argument("name", help="a script in bench/, e.g. word2vec_vs_gensim, serve_images, zero_shot, vision_ssl")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the script")
    bench.set_defaults(func=_bench)

    demo = commands.add_parser("demo", help="train quick models (or reuse them), export, index and serve")
    demo.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help=ARTIFACTS_HELP)
    demo.add_argument("--host", default="127.0.0.1", help="address the demo server binds (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port the demo server binds (default: 8000)")
    demo.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")
    demo.set_defaults(func=_demo)
    return parser


def _expected_errors() -> tuple[type[Exception], ...]:
    """What a user's input or machine can cause, each answered with one line and exit code 2: a
    file or folder that is not there or not readable, a port that is taken, a bad value (ValueError covers bad images, texts,
    sources and configs), a bundle, index or version that is missing or unreadable, and matplotlib missing for a picture."""
    from runtime.bundle import BundleError
    from runtime.files import VersionError
    from runtime.plotting import PlotDependencyError

    return OSError, ValueError, BundleError, VersionError, PlotDependencyError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(with_train_options=command == "train").parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports each CPU build it does not find
    try:
        args.func(args)
    except _expected_errors() as e:
        if args.debug:
            raise
        print(f"embedserve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
