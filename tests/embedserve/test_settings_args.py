"""`embedserve serve` takes every setting as an option, and its --help names each one's environment variable."""

from __future__ import annotations

import pytest

from embedserve.cli import main
from serving.settings import Settings
from serving.settings_doc import env_name


def test_help_names_every_setting_with_its_environment_variable_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines; a name is never split
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out and f"[env: {env_name(name)}]" in out, name
    assert "[env: EMBEDSERVE_MAX_QUEUE] [default: 512]" in out
    assert "--batching, --no-batching" in out and "{faiss,milvus}" in out


@pytest.fixture
def served(monkeypatch, tmp_path):
    """What `embedserve serve` would serve with: its Settings, caught before a server starts. The
    environment it writes is put back afterwards (monkeypatch restores each variable it set)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    monkeypatch.setenv("EMBEDSERVE_ARTIFACTS_DIR", str(tmp_path))
    caught = []
    monkeypatch.setattr("serving.server.serve", caught.append)
    return caught


def test_options_reach_the_settings_and_win_over_the_environment(served, monkeypatch, tmp_path):
    monkeypatch.setenv("EMBEDSERVE_MAX_QUEUE", "32")
    monkeypatch.setenv("EMBEDSERVE_MAX_IMAGE_BYTES", "1000")
    assert main(["serve", "--max-queue", "64", "--no-batching", "--precision", "int8", "--request-timeout-s", "2.5",
                 "--milvus-token", "user:pw"]) == 0
    settings = served[0]
    assert (settings.max_queue, settings.batching, settings.precision, settings.request_timeout_s) == (64, False, "int8", 2.5)
    assert settings.milvus_token.get_secret_value() == "user:pw"
    assert settings.max_image_bytes == 1000  # what no option names still comes from the environment
    assert settings.artifacts_dir == tmp_path


def test_the_earlier_serve_options_still_work(served, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--artifacts", "here", "--host", "127.0.0.2", "--port", "8123", "--workers", "3"]) == 0
    settings = served[0]
    # a relative folder is made absolute: the worker processes read it from the environment
    assert (settings.artifacts_dir, settings.host, settings.port, settings.workers) == (tmp_path / "here", "127.0.0.2", 8123, 3)


def test_a_bad_value_is_refused_by_the_option_with_the_fields_own_rule(served, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--max-queue", "0"])
    assert exit.value.code == 2 and "argument --max-queue: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert not served
