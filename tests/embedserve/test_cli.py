import subprocess
import sys

from embedserve.cli import main


def test_serve_does_not_import_torch():
    # The serving half must run on a machine without torch: importing the app and building the
    # CLI's serve command must not pull it in.
    code = "import sys; from embedserve.cli import build_parser; from serving.app import create_app; " \
           "build_parser(with_train_options=False); create_app(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--name", "x", "--artifacts", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_bench_lists_what_exists_when_the_name_is_wrong(capsys):
    try:
        main(["bench", "no_such_bench"])
    except SystemExit as e:
        assert "no benchmark 'no_such_bench'" in str(e)
    else:
        raise AssertionError("expected SystemExit")


def test_train_simclr_on_tiny_data_writes_a_servable_bundle(tmp_path):
    from export.bundle import open_bundle

    argv = ["train", "simclr", "--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16",
            "--width", "4", "--num-workers", "0", "--device", "cpu", "--artifacts", str(tmp_path), "--name", "tiny-simclr"]
    assert main(argv) == 0
    bundle = open_bundle(tmp_path, "tiny-simclr")
    assert bundle.manifest.kind == "image-encoder" and bundle.manifest.metrics["train_steps"] == 2
    assert (tmp_path / "checkpoints" / "tiny-simclr.pt").is_file()
