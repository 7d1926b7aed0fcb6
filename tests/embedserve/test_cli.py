import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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


def test_bench_lists_what_exists_when_the_name_is_wrong(tmp_path, monkeypatch):
    # benchmarks are looked up in ./bench: a folder of our own, so the test knows what it should list
    (tmp_path / "bench").mkdir()
    for name in ("serving_load", "analogy_speed"):
        (tmp_path / "bench" / f"{name}.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"no benchmark 'no_such_bench' in ./bench; available: analogy_speed, serving_load$"):
        main(["bench", "no_such_bench"])


def test_train_simclr_on_tiny_data_writes_a_servable_bundle_with_its_curves(tmp_path, capsys):
    from runtime.bundle import TRAINING_CURVES_ROLE, open_bundle

    argv = ["train", "simclr", "--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16",
            "--width", "4", "--num-workers", "0", "--device", "cpu", "--artifacts", str(tmp_path), "--name", "tiny-simclr"]
    assert main(argv) == 0
    bundle = open_bundle(tmp_path, "tiny-simclr")
    assert bundle.manifest.kind == "image-encoder" and bundle.manifest.metrics["train_steps"] == 2
    assert (tmp_path / "checkpoints" / "tiny-simclr.pt").is_file()
    # the loop drew its curves beside the log, export copied them in, and the command says where both are
    drawn, copy = tmp_path / "logs" / "tiny-simclr.png", bundle.file(TRAINING_CURVES_ROLE)
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and copy.read_bytes() == drawn.read_bytes()
    assert f"training curves: {drawn} (beside its log), {copy} (in the bundle)" in capsys.readouterr().out


def test_train_word2vec_writes_its_log_and_curves_beside_it_and_into_the_bundle(tmp_path, capsys):
    from runtime.bundle import TRAINING_CURVES_ROLE, open_bundle

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the king and the queen rule the land of the king\n\n" * 300, encoding="utf-8")
    argv = ["train", "word2vec", "--corpus", str(corpus), "--min-count", "1", "--dim", "8", "--epochs", "1",
            "--device", "numba", "--artifacts", str(tmp_path), "--name", "tiny-words"]
    assert main(argv) == 0
    bundle = open_bundle(tmp_path, "tiny-words")
    log = tmp_path / "logs" / "tiny-words.jsonl"
    assert bundle.manifest.training_config["log_path"] == str(log) and '"kind": "epoch"' in log.read_text()
    drawn, copy = log.with_suffix(".png"), bundle.file(TRAINING_CURVES_ROLE)
    assert copy.read_bytes() == drawn.read_bytes()
    assert f"training curves: {drawn} (beside its log), {copy} (in the bundle)" in capsys.readouterr().out


def test_plot_index_writes_a_map_and_says_where(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from index.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    vectors = rng.normal(size=(3, 8))[labels] + 0.2 * rng.normal(size=(len(labels), 8))
    VectorIndex.build(np.arange(len(labels)), vectors, [{"label": int(c)} for c in labels]).save(tmp_path, "toy")
    assert main(["plot", "index", "toy", "--artifacts", str(tmp_path), "--max-points", "90"]) == 0
    path = tmp_path / "plots" / "toy-tsne.png"
    assert capsys.readouterr().out == f"wrote {path}\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (900, 900)
    assert main(["plot", "index", "toy", "--artifacts", str(tmp_path), "--color-by", "colour"]) == 2
    assert "no sampled item has metadata field 'colour'" in capsys.readouterr().err


def child_pids(pid: int) -> set[str]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):  # the parent pid field
                children.add(stat.parent.name)
        except OSError:
            pass
    return children


def test_serve_with_two_workers_runs_two_processes_that_answer_and_stops_on_ctrl_c(image_artifacts, make_png):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "embedserve", "serve", "--artifacts", str(image_artifacts), "--port", str(port),
               "--workers", "2"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        answers, deadline = 0, time.monotonic() + 60
        while answers < 6 and time.monotonic() < deadline:  # fresh connections, so both workers get some
            assert server.poll() is None, server.stdout.read()
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/embed/image", files=[("files", ("a.png", make_png(answers)))],
                                      headers={"Connection": "close"})
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if response.status_code == 200:
                assert response.json()["model"] == "tiny" and len(response.json()["embeddings"]) == 1
                answers += 1
        assert answers == 6
        # uvicorn starts its workers with multiprocessing's spawn (beside, perhaps, a resource tracker)
        workers = [pid for pid in child_pids(server.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, f"children: {[Path(f'/proc/{p}/cmdline').read_text() for p in child_pids(server.pid)]}"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert server.returncode in (0, 130)


def test_expected_errors_are_one_line_and_exit_code_2(tmp_path, capsys):
    cases = [
        (["index", "build", "--name", "x", "--model", "nope", "--source", "fashion-mnist:test"], "no model named 'nope'"),
        (["train", "simclr", "--device", "cuda:7", "--data", "digits", "--epochs", "1"], "sees no CUDA GPU"),
    ]
    if __import__("torch").cuda.is_available():
        cases.pop()
    for argv, message in cases:
        assert main([*argv, "--artifacts", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("embedserve: error: ") and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    from runtime.bundle import BundleError

    with pytest.raises(BundleError, match="no model named 'nope'"):
        main(["--debug", "index", "build", "--name", "x", "--model", "nope", "--source", "fashion-mnist:test",
              "--artifacts", str(tmp_path)])


def test_options_carry_help_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "clip", "--help"])
    out = capsys.readouterr().out
    assert "{minilm,scratch}" in out and "{L,RGB}" in out  # Literal fields offer their choices
    assert "LiT-style: freeze the text tower's weights" in out  # help is the field's comment in ClipConfig
    with pytest.raises(SystemExit) as exit:
        main(["index", "build", "--name", "x", "--model", "m", "--source", "s", "--batch-size", "0"])
    assert exit.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_jobs_run_embeds_a_folder_into_an_index(image_artifacts, tmp_path, make_png, capsys):
    from index.vector_index import open_index

    (tmp_path / "pics").mkdir()
    for i in range(3):
        (tmp_path / "pics" / f"{i}.png").write_bytes(make_png(i))
    argv = ["jobs", "run", "--source", str(tmp_path / "pics"), "--model", "tiny", "--index", "pics",
            "--artifacts", str(image_artifacts)]
    assert main(argv) == 0
    assert '"state": "succeeded"' in capsys.readouterr().out and len(open_index(image_artifacts, "pics")) == 3
    assert main([*argv[:3], str(tmp_path / "nothing"), *argv[4:]]) == 2  # a failed job: one line, exit 2
    assert "neither a folder" in capsys.readouterr().err


def test_demo_stops_at_once_when_its_port_is_taken(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--artifacts", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is taken" in err and not (tmp_path / "models").exists()  # nothing trained


def test_import_of_a_broken_sentence_transformers_folder_is_one_line_and_exit_2(tmp_path, capsys, minilm_folder):
    assert main(["import", "sentence-transformers", str(tmp_path), "--name", "x", "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embedserve: error: ") and "modules.json is missing" in err and err.count("\n") == 1
    # every declaration in place, but weights that are not a safetensors file: sentence-transformers cannot load them
    folder = tmp_path / "damaged"
    for path in minilm_folder.rglob("*.json"):
        (folder / path.relative_to(minilm_folder)).parent.mkdir(parents=True, exist_ok=True)
        (folder / path.relative_to(minilm_folder)).write_bytes(path.read_bytes())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["import", "sentence-transformers", str(folder), "--name", "x", "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot load" in err and err.count("\n") == 1 and not (tmp_path / "models").exists()


def test_index_build_writes_where_the_server_settings_say(image_artifacts, tmp_path, make_png, monkeypatch, capsys):
    from index.config import IndexConfig
    from index.store import open_index_store

    (tmp_path / "pics").mkdir()
    for i in range(3):
        (tmp_path / "pics" / f"{i}.png").write_bytes(make_png(i))
    uri = str(tmp_path / "milvus.db")
    monkeypatch.setenv("EMBEDSERVE_INDEX_BACKEND", "milvus")
    monkeypatch.setenv("EMBEDSERVE_MILVUS_URI", uri)
    assert main(["index", "build", "--name", "pics", "--model", "tiny", "--source", str(tmp_path / "pics"),
                 "--artifacts", str(image_artifacts)]) == 0
    assert "wrote index pics version v1 (milvus)" in capsys.readouterr().out
    assert not (image_artifacts / "indexes" / "pics").exists()  # not a FAISS folder
    store = open_index_store(image_artifacts, IndexConfig(backend="milvus", milvus_uri=uri))
    try:
        index = store.open("pics")
        assert len(index) == 3 and index.model == "tiny" and index.manifest.extra["precision"] == "fp32"
    finally:
        store.close()


def test_train_simclr_on_a_colour_folder_trains_in_colour_with_its_own_statistics_and_scores_held_out_images(
        tmp_path, capsys):
    import json

    from runtime.bundle import open_bundle
    from tests.colour_folder import write_colour_folder

    folder = write_colour_folder(tmp_path / "shapes")
    argv = ["train", "simclr", "--quick", "--data", str(folder), "--epochs", "1", "--width", "4", "--device", "cpu",
            "--held-out-fraction", "0.3", "--no-progress", "--artifacts", str(tmp_path / "a"), "--name", "shapes"]
    assert main(argv) == 0
    preprocessing = open_bundle(tmp_path / "a", "shapes").manifest.preprocessing
    assert preprocessing.mode == "RGB" and len(preprocessing.mean) == 3 and 28 < preprocessing.crop <= 64  # by the images
    assert all(0.8 < m < 1.0 for m in preprocessing.mean)  # measured: mostly white ground, not Fashion-MNIST's 0.286
    epochs = [json.loads(line) for line in (tmp_path / "a" / "logs" / "shapes.jsonl").read_text().splitlines()
              if '"epoch"' in line and '"eval"' in line]
    assert 0 <= epochs[-1]["eval"]["knn_top1_pct"] <= 100  # the class subfolders' held-out images, scored
    # given, they are used as given; a mismatch is refused before any image is read
    assert main([*argv, "--mode", "RGB", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--name", "given"]) == 0
    assert open_bundle(tmp_path / "a", "given").manifest.preprocessing.mean == (0.5, 0.5, 0.5)
    capsys.readouterr()
    assert main([*argv[:4], str(tmp_path / "nothing here"), *argv[5:], "--mode", "RGB", "--mean", "0.5", "--std", "0.2"]) == 2
    assert "--mode RGB has 3 channel(s) but --mean/--std have 1 value(s)" in capsys.readouterr().err


def test_jobs_list_show_and_cancel_reach_the_server_the_settings_name(monkeypatch, capsys):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked = []

    class Jobs(BaseHTTPRequestHandler):  # answers as the server's jobs API does, and notes what it was asked
        def answer(self):
            asked.append((self.command, self.path))
            body = json.dumps({"jobs": []} if self.path == "/jobs" else {"id": self.path.rsplit("/", 1)[1]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_DELETE = answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert main(["jobs", "list", "--url", f"http://127.0.0.1:{port}"]) == 0
        assert json.loads(capsys.readouterr().out) == {"jobs": []}
        monkeypatch.setenv("EMBEDSERVE_PORT", str(port))  # no --url: where `embedserve serve` would listen
        assert main(["jobs", "show", "abc"]) == 0 and main(["jobs", "cancel", "abc"]) == 0
        assert asked == [("GET", "/jobs"), ("GET", "/jobs/abc"), ("DELETE", "/jobs/abc")]
    finally:
        server.shutdown()
