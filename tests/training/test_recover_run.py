"""tools/recover_run.py: a float16 export of a tiny run rebuilt into a run folder (format 2 graphs: what export
writes today; the shipped format-1 voice takes ~20 s of an `s` model, so it is left to the tool's own run)."""

import numpy as np

from tests.helpers import REPO  # noqa: F401 (puts tools/ on the path)
from training import checkpoint as ckpt_io


def random_run(run_dir, data_dir, step: int = 2, **changes):
    """A finished run folder at ``step`` whose every weight is random (asymmetric smoothing filters too)."""
    import tensorflow as tf

    from training.config import Config
    from training.train import Learner

    config = Config.preset("tiny", speakers=("alice", "bob"), steps=step, **changes)
    learner, rng = Learner(config, tf.distribute.get_strategy()), np.random.default_rng(5)
    for v, e in zip(learner.variables, learner.ema):
        e.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))
    run_dir.mkdir()
    config.to_json(run_dir / "config.json")
    ckpt_io.write_json_atomic(run_dir / "run.json", {"data": {"data_dir": str(data_dir), "val_regex": r"_[01]\.wav$"},
                                                     "best_step": step})
    ckpt_io.save_checkpoint(run_dir, step, learner.saved, learner.saved_ema, learner.optimizer.variables, {})


def test_recovered_run_has_the_exported_weights(tiny_data, tmp_path):
    from convert.export import export
    from recover_run import main, recover
    from training.qat import FineTuneSource
    from training.step import step_weights, upsampling_matrix

    run, model_dir = tmp_path / "run", tmp_path / "f16"
    random_run(run, tiny_data)
    export(run, model_dir, "float16", eval_samples=2000, log=lambda m: None)
    summary = recover(model_dir, tmp_path / "rec", str(tiny_data))
    assert summary["format_version"] == 2 and summary["logit_error"] < 1e-5

    source, _, _ = ckpt_io.load_model(run)
    rebuilt, config, ckpt = ckpt_io.load_model(tmp_path / "rec")
    assert ckpt.name == "ckpt-00000002" and config.steps == 2 and FineTuneSource.open(tmp_path / "rec")
    a, b = step_weights(source), step_weights(rebuilt)
    f16 = lambda x: x.astype(np.float16).astype(np.float32)  # noqa: E731 (what the step graph stores)
    for la, lb in zip(a["layers"], b["layers"]):
        for key in ("w", "b", "res_w", "res_b"):
            assert (la[key] is None and lb[key] is None) or np.array_equal(f16(la[key]), lb[key])
    for key in ("skip_w", "skip_b", "head1_w", "head1_b", "head2_w", "head2_b"):
        assert np.array_equal(f16(a[key]), b[key])
    for key in ("embedding", "cond_w"):  # a manifest table and the float32 conditioner graph
        assert np.array_equal(a[key], b[key])
    # folded at export: compared as the graphs hold them
    np.testing.assert_allclose(a["speaker_bias"], b["speaker_bias"], atol=1e-6)
    np.testing.assert_allclose(upsampling_matrix(source, 8), upsampling_matrix(rebuilt, 8), atol=1e-5)
    ema, weights = (np.load(ckpt / name) for name in ("ema.npz", "weights.npz"))
    assert all(np.array_equal(ema[k], weights[k]) for k in ema.files)

    assert main([str(model_dir), "--out", str(tmp_path / "rec")]) == 2  # exists: one line, nothing replaced


def test_recovered_lpc_inputs_run_has_its_signal_and_prediction_tables(tiny_data, tmp_path):
    from convert.export import export
    from recover_run import recover
    from training.step import step_weights

    run, model_dir = tmp_path / "run", tmp_path / "f16"
    random_run(run, tiny_data, lpc_order=8, lpc_inputs=True)
    export(run, model_dir, "float16", eval_samples=2000, log=lambda m: None)
    summary = recover(model_dir, tmp_path / "rec", str(tiny_data))
    assert summary["format_version"] == 3 and summary["logit_error"] < 1e-5  # the s and p inputs checked too
    a, b = step_weights(ckpt_io.load_model(run)[0]), step_weights(ckpt_io.load_model(tmp_path / "rec")[0])
    for key in ("embedding", "signal_embedding", "prediction_embedding"):
        assert np.array_equal(a[key], b[key]) and np.ptp(a[key]) > 0
