"""Tiny SimCLR and MAE checkpoints trained for two steps on scikit-learn's digits, shared by the
method tests, and a word2vec run killed after its first checkpoint."""

import pytest
import torch

from training.methods.mae import MAEConfig, train_mae
from training.methods.simclr import SimCLRConfig, train_simclr


@pytest.fixture(scope="session")
def simclr_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("simclr")
    config = SimCLRConfig.quick(data="digits", width=4, proj_hidden_dim=32, proj_dim=16, epochs=1, batch_size=32,
                                max_steps_per_epoch=2, device="cpu", checkpoint_path=str(folder / "simclr.pt"),
                                log_path=str(folder / "simclr.jsonl"))
    return config, train_simclr(config)


@pytest.fixture(scope="session")
def mae_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mae")
    config = MAEConfig.quick(data="digits", dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_num_heads=2,
                             epochs=1, batch_size=32, max_steps_per_epoch=2, device="cpu",
                             checkpoint_path=str(folder / "mae.pt"), log_path=str(folder / "mae.jsonl"))
    return config, train_mae(config)


@pytest.fixture
def one_torch_thread():
    """Tiny torch ops run fastest on one thread, above all on a machine that is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def killed_after_first_checkpoint(monkeypatch):
    """run(config, checkpoint): train word2vec until its first checkpoint is on disk, then die there
    as a killed run would (KeyboardInterrupt), leaving that checkpoint to resume from."""
    import training.methods.word2vec as word2vec

    def run(config, checkpoint) -> None:
        real_save = word2vec.save_checkpoint

        def save_then_crash(path, state):
            real_save(path, state)
            raise KeyboardInterrupt

        monkeypatch.setattr(word2vec, "save_checkpoint", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            word2vec.train_word2vec(config, checkpoint_path=checkpoint, progress=False)
        monkeypatch.setattr(word2vec, "save_checkpoint", real_save)

    return run
