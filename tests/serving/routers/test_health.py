from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


def _ready_and_metrics(artifacts: Path, **settings) -> tuple[dict, str]:
    with TestClient(create_app(Settings(artifacts_dir=artifacts, **settings))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        return {m["name"]: m for m in ready.json()["models"]}, client.get("/metrics").text


@pytest.mark.parametrize("precision, runs", [("auto", "int8"), ("int8", "int8"), ("fp16", "fp16"), ("fp32", "fp32")])
def test_readyz_and_metrics_say_which_variant_each_model_runs(tmp_path: Path, write_variant_bundle, write_image_bundle,
                                                              precision, runs):
    write_variant_bundle(tmp_path, "quantized")
    write_image_bundle(tmp_path, "plain")  # exported before variants: fp32 whatever is asked
    models, metrics = _ready_and_metrics(tmp_path, precision=precision)
    assert models["quantized"]["precision"] == {"image_encoder": runs}
    assert models["plain"]["precision"] == {"image_encoder": "fp32"}
    assert f'embedserve_model_precision{{model="quantized",precision="{runs}",role="image_encoder",version="v1"}} 1.0' in metrics
    assert 'embedserve_model_precision{model="plain",precision="fp32",role="image_encoder",version="v1"} 1.0' in metrics


def test_auto_keeps_fp32_for_an_int8_variant_that_lost_too_much_top1(tmp_path: Path, write_variant_bundle):
    write_variant_bundle(tmp_path, "lossy", int8_top1_change_pct=-3.0)
    models, _ = _ready_and_metrics(tmp_path)
    assert models["lossy"]["precision"] == {"image_encoder": "fp32"}


def test_the_precision_setting_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMBEDSERVE_PRECISION", "int8")
    assert Settings().runtime_config().precision == "int8"
    monkeypatch.setenv("EMBEDSERVE_PRECISION", "bf16")
    with pytest.raises(ValueError):
        Settings()


def test_readyz_lists_both_towers_of_a_clip_model(clip_artifacts: Path):
    models, _ = _ready_and_metrics(clip_artifacts)
    assert models["clip"]["precision"] == {"image_encoder": "fp32", "text_encoder": "fp32"}  # exported without variants


def test_readyz_names_the_provider_that_runs_where_a_listed_gpu_did_not_start(tmp_path: Path, write_variant_bundle,
                                                                              monkeypatch):
    # onnxruntime-gpu lists CUDA even where its libraries do not load; this CPU build lists it here
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    write_variant_bundle(tmp_path, "quantized")
    models, _ = _ready_and_metrics(tmp_path)
    assert models["quantized"]["runs_on"] == {"image_encoder": "CPUExecutionProvider"}
    assert models["quantized"]["precision"] == {"image_encoder": "int8"}  # auto chose for the CPU it runs on
