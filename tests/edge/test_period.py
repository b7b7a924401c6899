"""The period input (edge_runtime/period.py): training's classes one period back, the runtime's stepwise history,
and a period_input model (manifest format 4) scoring and streaming like the training model."""

import json

import numpy as np
import pytest

from edge_runtime import lpc
from edge_runtime.errors import ModelError
from edge_runtime.evaluate import evaluate_folder
from edge_runtime.features import conditioning_frames, frame_lags
from edge_runtime.manifest import load_manifest
from edge_runtime.period import PeriodHistory, period_classes
from edge_runtime.synth import Synthesizer
from tests.helpers import edited_model

HOP, SILENCE = 40, 128


def test_period_classes_are_the_classes_one_lag_back():
    classes = np.arange(10, 250)  # 240 samples, 6 frames
    lags = np.array([16, 20, 30, 30, 17, 99])
    got = period_classes(classes, lags, HOP, SILENCE)
    for t in range(239):  # position t feeds the prediction of sample t + 1, in frame (t + 1) // HOP
        source = t + 1 - lags[(t + 1) // HOP]
        assert got[t] == (classes[source] if source >= 0 else SILENCE), t
    assert got[-1] == SILENCE and got.dtype == np.int32
    assert got[15] == classes[0] and got[14] == SILENCE  # the first sample one period back is sample 0


def test_history_gives_training_classes_step_by_step_across_frame_blocks():
    rng = np.random.default_rng(3)
    lags = rng.integers(16, 134, (2, 12))  # two streams, their own periods
    classes = rng.integers(0, 256, (12 * HOP, 2))
    history = PeriodHistory(HOP, 134, streams=2, silence=SILENCE)
    assert history._size == 256  # a power of two above the longest lag
    history.add_frames(lags[:, :5].T)  # [k, B]; the rest arrives later, as streamed mel does
    history.push(classes[0])  # teacher forcing: sample 0 is given, the first row predicts sample 1
    got = []
    for t in range(1, classes.shape[0]):
        if t == 5 * HOP:
            history.add_frames(lags[:, 5:].T)
        got.append(history.next_classes())
        history.push(classes[t])
    for b in range(2):
        expected = period_classes(classes[:, b], lags[b], HOP, SILENCE)[:-1]
        np.testing.assert_array_equal(np.array(got)[:, b], expected)
    with pytest.raises(IndexError, match="needs the lag of frame 12"):
        history.next_classes()


def test_frame_lags_read_the_period_of_a_pulse_train():
    config = {"sample_rate": 8000, "n_mels": 20, "n_fft": 256, "win_length": 200, "hop_length": 80, "fmin": 0.0,
              "fmax": 4000.0, "log_floor": 1e-5, "pitch_features": True}
    for period in (25, 57, 101):
        pulses = np.zeros(8000, np.float32)
        pulses[::period] = 0.5
        lags = frame_lags(conditioning_frames(pulses, config), config)
        assert np.all(lags[5:-5] == period), (period, np.unique(lags[5:-5]))
    assert np.all(frame_lags(conditioning_frames(np.zeros(800, np.float32), config), config) == 134)  # silence
    odd = np.zeros((3, 22), np.float32)
    odd[:, 21] = [np.nan, -100.0, 5.0]  # a pitch feature off its range: the nearest end, never a wild lag
    np.testing.assert_array_equal(frame_lags(odd, config), [134, 134, 16])


@pytest.mark.parametrize("variant, engine, tolerance, nll_gap", [
    ("float32", "native", 1e-5, 1e-4), ("float32", "litert", 1e-5, 1e-4), ("int8", "auto", 0.05, 0.02)])
def test_period_input_model_scores_and_streams_like_training(built, variant, engine, tolerance, nll_gap):
    with np.load(built / "period_reference.npz") as data:
        case = {k: data[k] for k in data.files}
    assert case["lpc"].shape[1] == 3 and len(np.unique(case["lpc"][:, 2])) > 20  # the period column is used
    synth = Synthesizer.load(built / f"period_{variant}", engine=engine)
    assert synth.manifest.version == 4 and synth.engine.startswith("native" if engine == "native" else "litert")
    logits = synth.teacher_forced_logits(case["classes"], case["mel"], "alice")
    error = np.abs(logits - case["logits"]).max() / np.ptp(case["logits"])
    assert error < tolerance, error
    result, tf_nll = evaluate_folder(synth, built / "val"), json.loads((built / "period_tf_eval.json").read_text())
    assert result["samples"] == tf_nll["samples"]
    assert abs(result["nll_bits_per_sample"] - tf_nll["nll_bits_per_sample"]) < nll_gap, result
    mel = case["mel"]
    offline = np.concatenate(list(synth.stream(mel, seed=5)))
    blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, seed=5, block=37))), offline)
    assert offline.shape == (case["classes"].shape[0],) and 0.01 < np.abs(offline).max() <= 1
    if variant == "float32":  # the two engines' audio: the same to float32 rounding of the filters
        other = Synthesizer.load(built / "period_float32", engine="litert" if engine == "native" else "native")
        np.testing.assert_allclose(np.concatenate(list(other.stream(mel, seed=5))), offline, atol=1e-6)


def test_native_period_rows_are_checked_against_litert_at_load(built, monkeypatch):
    from edge_runtime import native

    synth = Synthesizer.load(built / "period_float32", engine="native")
    assert synth._compare_engines(synth._native) < 1e-5  # rows from random lags, coefficients and classes agree
    # an engine that reads the period one sample late builds other rows: the load-time check refuses it
    real = native.NativeStep.run
    monkeypatch.setattr(native.NativeStep, "run", lambda self, *a: real(self, *a[:-1], a[-1] + 1))
    refused = Synthesizer.load(built / "period_float32")
    assert refused.engine == "litert" and refused.engine_note.startswith("it differs from LiteRT")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tables"].pop("period_embedding"), "period_embedding tables must be given"),
    (lambda d: d.update(format_version=3), "a period_input model is format 4, and only such a model"),
    (lambda d: d["config"].update(period_input=False), "a period_input model is format 4"),
    (lambda d: d["config"].update(pitch_features=False), r"format 4 \(a period input\) needs pitch features"),
])
def test_bad_period_input_manifests_are_model_errors(built, tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        load_manifest(edited_model(built / "period_float32", tmp_path, change))


def test_input_rows_add_the_period_row_to_the_three_others():
    # one-hot tables: the period quarter of a row names e[t - L]; the compiled three-table kernel stands aside
    eye, zero = np.eye(256, dtype=np.float32), np.zeros((256, 256), np.float32)
    tables = tuple(np.hstack([eye if i == j else zero for j in range(4)]) for i in range(4))
    config = {"sample_rate": 8000, "n_mels": 2, "log_floor": 1e-5}
    rows = lpc.InputRows(tables, 4, HOP, 1, None, PeriodHistory(HOP, 134, 1, SILENCE), config)
    assert rows._kernel is None
    frames = np.zeros((3, 4), np.float32)  # pitch position 1 - 0 = 1: the shortest lag, 16
    rows.add_frames(np.zeros((3, 4)), frames)
    classes = np.arange(100, 200)
    for t, c in enumerate(classes[:-1]):
        row = rows.row(np.array([c]))[0]
        assert row[:256].argmax() == c and row[768:].argmax() == (classes[t - 16] if t >= 16 else SILENCE)
        rows.push(np.array([classes[t]]))


def test_native_engine_refuses_lags_outside_its_ring_and_lags_without_a_period_input(built):
    synth = Synthesizer.load(built / "period_float32", engine="native")
    step, n = synth._native, 4
    args = (n, 128, None, None, np.full((n, 1), 128), None, np.zeros((n, 8)))
    with pytest.raises(ValueError, match="lag out of range"):
        step.run(*args, np.array([16, 16, 1024, 16]))
    with pytest.raises(ValueError, match="lags given to a model without a period input, or missing"):
        step.run(*args, None)
    plain = Synthesizer.load(built / "lpcin_float32", engine="native")._native
    with pytest.raises(ValueError, match="lags given to a model without a period input"):
        plain.run(*args, np.full(n, 16))


def test_native_engine_declines_lags_beyond_its_ring(built):
    import copy
    import dataclasses

    from edge_runtime import native

    synth = Synthesizer.load(built / "period_float32", engine="litert")
    assert native.why_not(synth.manifest, synth.step, "cpu", 1) is None
    data = copy.deepcopy(synth.manifest.data)
    data["config"]["sample_rate"] = 96000  # 60 Hz: a lag of 1 600 samples
    reason = native.why_not(dataclasses.replace(synth.manifest, data=data), synth.step, "cpu", 1)
    assert reason == "a period input's lags reach 1600 samples, beyond the 1024 the compiled loop keeps"
