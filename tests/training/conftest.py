"""Fixtures of the TensorFlow tests (this process imports TensorFlow; the edge tests run in another)."""

import pytest


@pytest.fixture()
def tiny_config():
    """The tiny preset with two speakers (seeded)."""
    from training.config import Config

    return Config.preset("tiny", speakers=("alice", "bob"), seed=7)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A tiny model trained for a few seconds on ``tiny_data`` (validation: files with index 0 and 1)."""
    from training.config import Config
    from training.train import DataArgs, train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = Config.preset("tiny", seed=7, steps=300, val_every=150, checkpoint_every=150)
    summary = train(config, DataArgs(str(tiny_data), val_regex=r"_[01]\.wav$"), run_dir, progress=False,
                    log=lambda m: None)
    return run_dir, summary
