import os

from runtime.config import RuntimeConfig
from serving.settings import Settings


def test_onnxruntime_threads_default_to_onnxruntimes_choice_and_are_shared_among_workers():
    cores = len(os.sched_getaffinity(0))
    assert Settings().intra_op_threads() == 0 == RuntimeConfig().intra_op_threads  # one per physical core
    assert Settings(workers=2).intra_op_threads() == max(1, cores // 2)
    assert Settings(workers=4 * cores).intra_op_threads() == 1  # never none
    assert Settings(onnx_intra_op_threads=3, workers=8).intra_op_threads() == 3  # a setting is kept as it is
    assert Settings(workers=2).runtime_config().intra_op_threads == max(1, cores // 2)


def test_each_models_batcher_overlaps_the_batches_the_settings_say(image_artifacts):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    for settings, expected in [(Settings(artifacts_dir=image_artifacts), 2), (Settings(artifacts_dir=image_artifacts, batches_in_flight=1), 1)]:
        with TestClient(create_app(settings)) as client:
            batchers = [m.batcher for m in client.app.state.registry.image_models.values()]
            assert batchers and all(b.batches_in_flight == expected for b in batchers)
