"""Precision variants of an exported fp32 ONNX model, and what each gives up against fp32.

int8 is for CPUs: dynamic, row by row, for transformers (the text towers and the ViT, whose
activation ranges vary per input, and whose integer MatMul kernels beat the QDQ ones); static QDQ
calibrated on a few hundred training images for the CNN image encoders (onnxruntime's quantiser).
fp16 is for GPUs (onnxruntime's float16 converter, inputs and outputs kept float32). Each variant
is scored on its method's evaluation, beside the fp32 model on the same inputs: kNN top-1 for
image encoders, zero-shot top-1 for a CLIP text tower, and the cosine of its outputs to fp32's
for both. The result is a runtime.bundle.PrecisionVariant for the manifest.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.onnx import FP16_MIN_COSINE, ParityError, write_fp16_copy
from runtime.bundle import PrecisionVariant
from runtime.files import atomic_path
from runtime.preprocessing import PreprocessingSpec
from runtime.vectors import rowwise_cosine

log = logging.getLogger(__name__)

INT8_CALIBRATION_IMAGES = 256  # static int8: activation ranges from this many training images (seconds on 2 cores)
EVAL_REFERENCE_IMAGES = 2000  # kNN top-1: labelled reference images ...
EVAL_QUERY_IMAGES = 1000  # ... and the images classified by them (the test split where the data has one)
KNN_K = 20  # neighbours voting in the kNN top-1 (training.evaluation.knn)
RUN_BATCH = 256  # rows per onnxruntime call while evaluating
# How an int8 copy is timed against fp32: rows per call; calls each (the fastest counts), at least
# the first figure and at most the second, and no more once the timing has taken SPEED_SECONDS.
SPEED_BATCH, SPEED_CALLS, SPEED_SECONDS = 32, (2, 12), 2.0
# Static int8 quantises the ops that carry the compute; LayerNorm, Softmax and the final
# normalisation stay float (quantising them costs accuracy and saves nothing measurable). So does
# the last of these ops before the output (the centring's whitening, a projection head): its
# rounding lands on the embedding unaveraged, and alone it costs top-1 visibly.
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
ROWWISE = "dynamic-rowwise"  # the technique name of quantize_rowwise_int8's copies (PrecisionVariant.technique)


def variant_file_role(role: str, precision: str) -> str:
    """The manifest file role of `role`'s `precision` copy, e.g. image_encoder_int8."""
    return f"{role}_{precision}"


def variant_file_name(fp32_file: str, precision: str) -> str:
    """image_encoder.onnx -> image_encoder.int8.onnx."""
    stem = fp32_file[: -len(".onnx")] if fp32_file.endswith(".onnx") else fp32_file
    return f"{stem}.{precision}.onnx"


# ---- writing the variants ----

class _QuantizerNotices(logging.Filter):
    """onnxruntime's quantiser warns through the root logger about every tensor it leaves float, as
    it is told to (dozens of lines per model); keep its errors, drop the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime/quantization" not in record.pathname.replace("\\", "/")


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    notices = _QuantizerNotices()
    logging.getLogger().addFilter(notices)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notices)


def quantize_rowwise_int8(fp32_path: Path | str, int8_path: Path | str) -> Path:
    """int8 for transformer towers (the text towers, the ViT), quantised dynamically row by row.

    Every MatMul (or Gemm) by a weight matrix (Q, K, V, the projections, the MLP) becomes an int8
    one: the weights per output column, symmetric, once here; the activations at run time, each row
    (a token, or an image's patch) by its own largest magnitude, as uint8 around 128. A row's scale
    comes from that row alone, so an item's vector is the same whatever it is batched with, and the
    model runs batched. onnxruntime's own dynamic quantiser scales each activation tensor by its
    range over the whole batch, so an item's vector would change with its neighbours and each item
    would have to run alone; per row is also closer to fp32, and as fast.

    The int8 product runs in onnxruntime's MatMulIntegerToFloat (uint8 x int8 with the weight
    scales applied, the VNNI kernel where the CPU has it); each row's scale multiplies it after."""
    model = onnx.load(str(fp32_path))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    constants = [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in
                 (("int8/one", 1.0, np.float32), ("int8/levels", 127.0, np.float32),
                  ("int8/tiny", 1e-12, np.float32), ("int8/zero_point", 128, np.uint8))]
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18, as an attribute before
        constants.append(numpy_helper.from_array(np.array([-1], np.int64), "int8/last_axis"))
    quantized_rows: dict[str, str] = {}  # activation -> the prefix of its quantised copy, shared by its MatMuls (Q, K, V)
    replaced: set[str] = set()  # the fp32 weights, dropped unless something else reads them
    nodes, products = [], 0

    def quantize_rows(activation: str) -> list[onnx.NodeProto]:
        q = quantized_rows[activation] = f"int8/rows{len(quantized_rows)}"
        largest = (helper.make_node("ReduceMax", [q + "/abs", "int8/last_axis"], [q + "/max"], keepdims=1) if opset >= 18
                   else helper.make_node("ReduceMax", [q + "/abs"], [q + "/max"], axes=[-1], keepdims=1))
        return [helper.make_node("Abs", [activation], [q + "/abs"]), largest,
                helper.make_node("Max", [q + "/max", "int8/tiny"], [q + "/range"]),  # (..., 1); an all-zero row stays zero
                helper.make_node("Div", ["int8/levels", q + "/range"], [q + "/inverse"]),
                helper.make_node("Mul", [activation, q + "/inverse"], [q + "/scaled"]),  # in [-127, 127]
                helper.make_node("QuantizeLinear", [q + "/scaled", "int8/one", "int8/zero_point"], [q + "/uint8"])]

    for node in graph.node:
        w = _weight_matrix(node, weights)  # (K, N), or None for a node that stays as it is
        if w is None:
            nodes.append(node)
            continue
        column_scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0).astype(np.float32)  # (N,)
        p, products = f"int8/matmul{products}", products + 1
        # the row's 1/127 joins the column scales here, so each row's range multiplies the product as it is
        constants += [numpy_helper.from_array(np.clip(np.round(w / column_scale), -127, 127).astype(np.int8), p + "/weight"),
                      numpy_helper.from_array(column_scale / np.float32(127.0), p + "/weight_scale")]
        replaced.add(node.input[1])
        if node.input[0] not in quantized_rows:
            nodes += quantize_rows(node.input[0])
        q = quantized_rows[node.input[0]]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        scaled = p + "/scaled" if bias else node.output[0]
        nodes += [helper.make_node("MatMulIntegerToFloat", [q + "/uint8", p + "/weight", "int8/one", p + "/weight_scale",
                                                            "int8/zero_point"], [p + "/product"], domain="com.microsoft"),
                  helper.make_node("Mul", [p + "/product", q + "/range"], [scaled], name=node.name)]
        if bias:
            nodes.append(helper.make_node("Add", [scaled, bias], [node.output[0]], name=node.name + "/bias"))
    if not replaced:
        raise ValueError(f"{fp32_path} has no MatMul or Gemm by a weight matrix to quantise")
    still_used = {name for n in nodes for name in n.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept + constants)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    int8_path = Path(int8_path)
    with atomic_path(int8_path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return int8_path


def _weight_matrix(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The float (K, N) weights `node` multiplies its input by, when it is a MatMul by a weight
    matrix or a plain Gemm (A @ B (+ C), B maybe transposed) whose input is an activation; else None."""
    weight = weights.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
    if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT or node.input[0] in weights:
        return None
    w = numpy_helper.to_array(weight)
    if node.op_type == "MatMul":
        return w
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
        return None
    return w.T if attributes.get("transB", 0) else w


def quantize_static_int8(fp32_path: Path | str, int8_path: Path | str, input_name: str, calibration: np.ndarray,
                         batch_size: int = 32) -> Path:
    """QDQ int8 (uint8 activations, per-channel int8 weights) with activation ranges calibrated on
    `calibration` (N, C, H, W) float32 preprocessed training images: for the CNN image encoders
    (a ViT takes quantize_rowwise_int8, int8_technique). onnxruntime's CPU provider fuses the QDQ
    pairs into QLinearConv / QLinearMatMul, which use the VNNI instructions where the CPU has them."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, np.float32)}

    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(prefix="embedserve-quantize-") as scratch, atomic_path(int8_path) as tmp, _quiet_quantizer():
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference and folding, as quantize_static advises
        nodes = onnx.load(str(prepared), load_external_data=False).graph.node  # in topological order
        last = [n.name for n in nodes if n.op_type in STATIC_OP_TYPES][-1:]
        quantize_static(str(prepared), str(tmp), Batches(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(STATIC_OP_TYPES),
                        nodes_to_exclude=last)
    return int8_path


# ---- the data the variants are scored on ----

@dataclass(frozen=True)
class LabelledImages:
    """Preprocessed labelled images to score an image encoder by kNN top-1: queries classified by
    their nearest references."""

    references: np.ndarray  # (N, C, H, W) float32
    reference_labels: np.ndarray  # (N,) int64
    queries: np.ndarray  # (M, C, H, W) float32
    query_labels: np.ndarray  # (M,) int64
    source: str  # where they came from, for humans

    def describe(self) -> str:
        return f"{len(self.queries)} {self.source} images against {len(self.references)} references"


def _stack(dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    items = [dataset[int(i)] for i in indices]
    return np.stack([x.numpy() for x, _ in items]).astype(np.float32), np.array([y for _, y in items], np.int64)


def _open(config: dict[str, Any], preprocessing: PreprocessingSpec, split: str):
    from training.data.images import open_image_dataset
    from training.data.transforms import EvalTransform

    # a folder or a path,caption[,category] manifest (CLIP's too): the part training saw
    return open_image_dataset(config["data"], split, preprocessing.mode, EvalTransform.from_spec(preprocessing),
                              config.get("data_root"), held_out_fraction=config.get("held_out_fraction", 0.0))


def calibration_images(config: dict[str, Any], preprocessing: PreprocessingSpec, count: int = INT8_CALIBRATION_IMAGES,
                       seed: int = 0) -> np.ndarray | None:
    """`count` random training images (N, C, H, W) of the data `config` trained on (a data set, an
    image folder or a manifest), preprocessed as the bundle says; None when that data cannot be read here."""
    try:
        dataset = _open(config, preprocessing, "train")
    except (OSError, ValueError, KeyError) as e:
        log.warning("no int8 calibration images: cannot read the training data (%s)", e)
        return None
    chosen = np.random.default_rng(seed).choice(len(dataset), min(count, len(dataset)), replace=False)
    return _stack(dataset, np.sort(chosen))[0]


def labelled_images(config: dict[str, Any], preprocessing: PreprocessingSpec, references: int = EVAL_REFERENCE_IMAGES,
                    queries: int = EVAL_QUERY_IMAGES, seed: int = 0) -> LabelledImages | None:
    """References from the training split and queries from the test split where the data has one
    (Fashion-MNIST, digits); otherwise two disjoint random parts of the training images. None when
    the data cannot be read here or has no labels."""
    try:
        train = _open(config, preprocessing, "train")
    except (OSError, ValueError, KeyError) as e:
        log.warning("variants scored by cosine only: cannot read the training data (%s)", e)
        return None
    rng = np.random.default_rng(seed)
    try:
        test = _open(config, preprocessing, "test") if config["data"] in ("fashion-mnist", "digits") else None
    except OSError:  # a training-only copy of the data (as tests write)
        test = None
    if test is not None:
        ref = rng.choice(len(train), min(references, len(train)), replace=False)
        query = rng.choice(len(test), min(queries, len(test)), replace=False)
        (rx, ry), (qx, qy), source = _stack(train, np.sort(ref)), _stack(test, np.sort(query)), f"{config['data']} test"
    else:
        order = rng.permutation(len(train))
        cut = max(1, len(order) - min(queries, len(order) // 2))
        (rx, ry), (qx, qy) = _stack(train, np.sort(order[:cut][:references])), _stack(train, np.sort(order[cut:]))
        source = f"held-out {config['data']} training"
    if len(qx) == 0 or (ry < 0).any() or (qy < 0).any():
        log.warning("variants scored by cosine only: the data has no labels")
        return None
    return LabelledImages(rx, ry, qx, qy, source)


# ---- running and scoring ----

def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_batched(path: Path | str, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The model's first output for `inputs` (one array per model input, rows aligned), RUN_BATCH
    rows a call."""
    session = _session(Path(path))
    names = [i.name for i in session.get_inputs()]
    return np.concatenate([session.run(None, {n: x[i:i + RUN_BATCH] for n, x in zip(names, inputs)})[0]
                           for i in range(0, len(inputs[0]), RUN_BATCH)])  # (N, D)


def cpu_speedup(fp32_path: Path, variant_path: Path, inputs: Sequence[np.ndarray]) -> float:
    """Rows/s of `variant_path` over `fp32_path`'s on the first SPEED_BATCH rows of `inputs` (one
    array per model input), with the server's session options: each model's fastest call of
    SPEED_CALLS (within SPEED_SECONDS), the two taken in turns so that a burst of other work hits
    both alike."""
    from runtime.encoders.onnx_runtime import session_options

    sessions = [ort.InferenceSession(str(p), sess_options=session_options(), providers=["CPUExecutionProvider"])
                for p in (fp32_path, variant_path)]
    feed = {i.name: x[:SPEED_BATCH] for i, x in zip(sessions[0].get_inputs(), inputs)}
    fastest = [float("inf")] * 2
    fewest, most = SPEED_CALLS
    for session in sessions:  # the first call of each warms it up
        session.run(None, feed)
    started = time.perf_counter()
    for call in range(1, most + 1):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            fastest[i] = min(fastest[i], time.perf_counter() - start)
        if call >= fewest and time.perf_counter() - started > SPEED_SECONDS:
            break
    return round(fastest[0] / fastest[1], 2)


def _scored(path: Path, data: LabelledImages | None, probe: np.ndarray) -> tuple[np.ndarray, float | None]:
    """(the model's outputs on the queries (or on `probe` without data), its kNN top-1 in percent
    of the queries by the references, or None without data): each image embedded once."""
    if data is None:
        return run_batched(path, [probe]), None
    from training.evaluation.knn import knn_accuracy

    queries = run_batched(path, [data.queries])  # (M, D)
    top1 = knn_accuracy(run_batched(path, [data.references]), data.reference_labels, queries,
                        data.query_labels, k=KNN_K)
    return queries, top1


def zero_shot_top1(image_embeddings: np.ndarray, labels: np.ndarray, class_prompts: list[list[str]], embed_texts) -> float:
    """Zero-shot top-1 (percent): each image takes the class whose prompts' mean unit embedding
    (class_prompts[c], embedded by `embed_texts`) is nearest. The classifier of index.class_matrix,
    without its query-bank offsets (export cannot import index/; the offsets move every class of a
    model alike between variants)."""
    classes = []
    for prompts in class_prompts:
        e = embed_texts(prompts)  # (T, D)
        mean = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(axis=0)
        classes.append(mean / np.linalg.norm(mean))
    scores = image_embeddings @ np.stack(classes).T  # (N, classes)
    return 100.0 * float((scores.argmax(axis=1) == labels).mean())


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    cos = rowwise_cosine(reference, candidate)
    return round(float(cos.min()), 6), round(float(cos.mean()), 6)


@dataclass(frozen=True)
class WrittenVariant:
    variant: PrecisionVariant  # what the manifest records
    file: str  # the file written, inside the scratch folder


def int8_technique(arch: str) -> str:
    """How an image encoder of architecture `arch` ("resnet", "vit") is quantised to int8.

    A ViT is a transformer: dynamic int8 (integer MatMuls) runs it faster than fp32, where static
    QDQ runs it slower (the Q/DQ pairs around every LayerNorm, Softmax and GELU cost more than the
    int8 matmuls save).
    Convolutions have no fast dynamic kernel (ConvInteger), so CNNs take static QDQ (QLinearConv)."""
    return ROWWISE if arch == "vit" else "static-qdq"


def _write_copy(fp32_path: Path, precision: str, int8: str = ROWWISE, input_name: str = "",
                calibration: np.ndarray | None = None) -> tuple[Path, str, int] | None:
    """Write `fp32_path`'s `precision` copy beside it: (its path, its technique, the calibration
    images it took), or None for a copy not written (static int8 without `calibration`, an fp16
    copy that write_fp16_copy refused). `int8` is the technique for int8 (int8_technique)."""
    path = fp32_path.with_name(variant_file_name(fp32_path.name, precision))
    if precision == "int8" and int8 == ROWWISE:
        quantize_rowwise_int8(fp32_path, path)
        return path, ROWWISE, 0
    if precision == "int8":
        if calibration is None:
            log.warning("%s: no int8 variant without calibration images", fp32_path.name)
            return None
        quantize_static_int8(fp32_path, path, input_name, calibration)
        return path, "static-qdq", len(calibration)
    if precision == "fp16":
        return (path, "float16", 0) if write_fp16_copy(fp32_path, path) is not None else None
    raise ValueError(f"unknown precision {precision!r}; variants are int8 and fp16")


def image_encoder_variants(fp32_path: Path, role: str, input_name: str, precisions: Sequence[str],
                           calibration: np.ndarray | None, data: LabelledImages | None,
                           probe: np.ndarray, int8: str = "static-qdq") -> list[WrittenVariant]:
    """Write the `precisions` ("int8", "fp16") copies of an image encoder beside `fp32_path` and
    score each against it: kNN top-1 on `data` (when given) and the cosine of its outputs to fp32's
    on the queries (or on `probe` (B, C, H, W) without data). `int8` is the technique (int8_technique);
    static QDQ needs `calibration` images and is skipped, with a warning, without them."""
    inputs = data.queries if data is not None else probe
    reference, fp32_top1 = _scored(fp32_path, data, probe)
    written = []
    for precision in precisions:
        copy = _write_copy(fp32_path, precision, int8, input_name, calibration)
        if copy is None:
            continue
        path, technique, calibrated = copy
        outputs, top1 = _scored(path, data, probe)
        low, mean = _agreement(reference, outputs)
        variant = PrecisionVariant(
            role=role, precision=precision, file_role=variant_file_role(role, precision), technique=technique,
            calibration_images=calibrated,
            evaluation=(f"kNN top-1 (k={KNN_K}) of {data.describe()}; cosine to fp32 on the queries" if data is not None
                        else f"cosine to fp32 on {len(inputs)} random inputs (no labelled data here)") + "; run on CPU",
            **_top1_fields(top1, fp32_top1), min_cosine=low, mean_cosine=mean,
            cpu_speedup=cpu_speedup(fp32_path, path, [inputs]) if precision == "int8" else None)
        written.append(_written(variant, path))
    return written


@dataclass(frozen=True)
class ZeroShotData:
    """What scores a CLIP text tower by zero-shot top-1: image embeddings from the fp32 image tower
    with their labels, and each class's prompts."""

    image_embeddings: np.ndarray  # (N, D) unit rows
    labels: np.ndarray  # (N,) int64, indices into class_prompts
    class_prompts: list[list[str]]  # per class: its name in each template
    source: str  # for humans


def text_encoder_variants(fp32_path: Path, role: str, precisions: Sequence[str], tokens: tuple[np.ndarray, np.ndarray],
                          tokenize, zero_shot: ZeroShotData | None) -> list[WrittenVariant]:
    """Write the `precisions` copies of a text tower (int8 row by row, fp16) beside `fp32_path` and
    score each against it: the cosine of its outputs to fp32's on `tokens` (ids, mask) (N, T) each,
    and zero-shot top-1 on `zero_shot` when given (`tokenize(texts)` -> (ids, mask))."""
    reference = run_batched(fp32_path, list(tokens))

    def embed_with(path: Path):
        return lambda texts: run_batched(path, list(tokenize(texts)))

    top1_of = (lambda path: zero_shot_top1(zero_shot.image_embeddings, zero_shot.labels, zero_shot.class_prompts,
                                           embed_with(path))) if zero_shot is not None else None
    fp32_top1 = top1_of(fp32_path) if top1_of else None
    written = []
    for precision in precisions:
        copy = _write_copy(fp32_path, precision)  # int8 row by row: a text tower is a transformer
        if copy is None:
            continue
        path, technique, _ = copy
        low, mean = _agreement(reference, run_batched(path, list(tokens)))
        top1 = top1_of(path) if top1_of else None
        evaluation = f"cosine to fp32 on {len(tokens[0])} texts"
        if zero_shot is not None:
            evaluation = f"zero-shot top-1 of {zero_shot.source} ({len(zero_shot.class_prompts)} classes); " + evaluation
        variant = PrecisionVariant(
            role=role, precision=precision, file_role=variant_file_role(role, precision), technique=technique,
            evaluation=evaluation + "; run on CPU", **_top1_fields(top1, fp32_top1), min_cosine=low, mean_cosine=mean,
            cpu_speedup=cpu_speedup(fp32_path, path, list(tokens)) if precision == "int8" else None)
        written.append(_written(variant, path))
    return written


def _written(variant: PrecisionVariant, path: Path) -> WrittenVariant:
    """The variant written at `path`, with a log line of what export measured of it."""
    speed = f"{variant.cpu_speedup}x fp32's speed" if variant.cpu_speedup is not None else "not timed"
    log.info("%s: top-1 change %s points, min cosine %.4f, %s", path.name, variant.top1_change_pct, variant.min_cosine, speed)
    return WrittenVariant(variant, path.name)


def check_fp16_agreement(written: Sequence[WrittenVariant]) -> None:
    """ParityError when an fp16 copy among `written` disagrees with its fp32 model (lowest row
    cosine under FP16_MIN_COSINE): half precision loses digits, never the answer."""
    for w in written:
        if w.variant.precision == "fp16" and not w.variant.min_cosine >= FP16_MIN_COSINE:  # `not >=`: NaN fails too
            raise ParityError(f"the fp16 copy of the {w.variant.role} disagrees with fp32: lowest row cosine "
                              f"{w.variant.min_cosine} < {FP16_MIN_COSINE}")


def _top1_fields(top1: float | None, fp32_top1: float | None) -> dict[str, float | None]:
    """A variant's top-1, fp32's, and the change between them, each rounded; the change is taken
    between the rounded figures, so the manifest's three numbers always agree with each other."""
    top1, fp32_top1 = _round(top1), _round(fp32_top1)
    change = _round(top1 - fp32_top1) if top1 is not None and fp32_top1 is not None else None
    return {"top1_pct": top1, "fp32_top1_pct": fp32_top1, "top1_change_pct": change}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
