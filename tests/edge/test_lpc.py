"""Excitation modelling (edge_runtime/lpc.py): LPC from the log-mel, the excitation the model learns, the
runtime's synthesis filter (compiled and fallback), and a trained excitation model end to end."""

import json

import numpy as np
import pytest

from edge_runtime import lpc
from edge_runtime.audio import log_mel, mu_law_decode, mu_law_encode, preemphasize
from edge_runtime.errors import ModelError
from edge_runtime.evaluate import evaluate_folder
from edge_runtime.manifest import load_manifest
from edge_runtime.native import kernel_module
from edge_runtime.synth import Synthesizer
from tests.helpers import edited_model

FRONT = dict(sample_rate=8000, n_fft=512, win_length=320, hop_length=80, n_mels=80, fmin=0.0, fmax=4000.0,
             log_floor=1e-5)
HOP = FRONT["hop_length"]


def resonance(freq: float, radius: float, n: int = 8000, seed: int = 0) -> np.ndarray:
    """White noise through a two-pole resonator: a signal whose true envelope is known."""
    rng = np.random.default_rng(seed)
    e = 0.02 * rng.standard_normal(n)
    a1, a2 = -2 * radius * np.cos(2 * np.pi * freq / 8000), radius * radius
    y = np.zeros(n)
    for t in range(n):
        y[t] = e[t] - a1 * (y[t - 1] if t else 0.0) - a2 * (y[t - 2] if t > 1 else 0.0)
    return y.astype(np.float32)


def coefficients(audio, order=8, gamma=1.0, preemphasis=0.0):
    mel = log_mel(audio, **FRONT)
    return lpc.lpc_from_mel(mel, sample_rate=8000, n_fft=512, n_mels=80, fmin=0.0, fmax=4000.0, order=order,
                            gamma=gamma, preemphasis=preemphasis)


def test_levinson_solves_the_normal_equations():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 400))
    r = np.stack([[np.dot(row[:400 - k], row[k:]) for k in range(11)] for row in x])
    a = lpc.levinson(r, 10)
    for frame in range(3):
        toeplitz = r[frame, np.abs(np.arange(10)[:, None] - np.arange(10)[None, :])]
        np.testing.assert_allclose(a[frame], np.linalg.solve(toeplitz, -r[frame, 1:11]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rate, n_fft, n_mels, fmin, fmax", [
    (8000, 512, 80, 0.0, 4000.0), (16000, 1024, 80, 300.0, 7000.0), (8000, 128, 16, 100.0, 3000.0)])
def test_uncovered_bins_take_the_nearest_covered_bins_envelope(rate, n_fft, n_mels, fmin, fmax):
    from edge_runtime.audio import mel_filterbank

    bank = mel_filterbank(rate, n_fft, n_mels, fmin, fmax)
    weight = bank.sum(axis=1)
    covered = np.flatnonzero(weight > 0)
    assert covered.size < bank.shape[0]  # some bins (below fmin, above fmax, or between narrow bands) uncovered
    # the definition, by brute force over all pairs: the closest covered bin, the lower one on a tie
    nearest = covered[np.abs(np.arange(bank.shape[0])[:, None] - covered[None, :]).argmin(axis=1)]
    basis, _ = lpc._envelope_basis(rate, n_fft, n_mels, fmin, fmax, 0.0)
    np.testing.assert_array_equal(basis.T, bank[nearest] / weight[nearest, None])


def test_lpc_from_the_mel_finds_the_resonance_and_whitens():
    audio = resonance(1000.0, 0.97)
    a = coefficients(audio)
    middle = a[a.shape[0] // 2]
    freqs = np.arange(257) * 8000 / 512
    response = 1 / np.abs(np.fft.rfft(np.concatenate([[1.0], middle]), 512))
    assert abs(freqs[response.argmax()] - 1000.0) < 60  # the envelope's peak where the resonator is
    assert np.all(np.abs(np.roots(np.concatenate([[1.0], middle]))) < 1)  # minimum phase: a stable synthesis
    e = lpc.excitation(audio, a, HOP)
    gain_db = 20 * np.log10(audio[800:].std() / e[800:].std())
    assert gain_db > 10, gain_db  # the prediction removes most of the resonance
    # bandwidth expansion pulls every pole inward by gamma
    expanded = coefficients(audio, gamma=0.9)[a.shape[0] // 2]
    np.testing.assert_allclose(expanded, middle * 0.9 ** np.arange(1, 9), rtol=1e-12)
    silent = coefficients(np.zeros(1600, np.float32))
    np.testing.assert_allclose(silent, 0, atol=1e-3)  # a flat (floor) spectrum predicts nothing


def test_lpc_ignores_the_envelope_scale_and_survives_any_finite_mel():
    mel = log_mel(resonance(1000.0, 0.97), **FRONT).astype(np.float64)  # float64: shifting it rounds nothing
    args = dict(sample_rate=8000, n_fft=512, n_mels=80, fmin=0.0, fmax=4000.0, order=16, gamma=0.9, preemphasis=0.85)
    a = lpc.lpc_from_mel(mel, **args)
    # a louder or quieter recording of the same sound has the same predictor
    for shift in (-30.0, 12.0, 900.0):  # exp(900) alone would overflow float64
        np.testing.assert_allclose(lpc.lpc_from_mel(mel + shift, **args), a, rtol=1e-9, atol=1e-12)
    wild = np.random.default_rng(2).uniform(-3e38, 3e38, mel.shape).astype(np.float32)  # a garbage mel file
    wild_a = lpc.lpc_from_mel(wild, **args)
    assert np.all(np.isfinite(wild_a))
    assert all(np.all(np.abs(np.roots(np.concatenate([[1.0], row]))) < 1) for row in wild_a)  # still stable


def test_synthesis_inverts_the_excitation_streaming_bit_for_bit():
    audio = preemphasize(resonance(700.0, 0.95, seed=2), 0.85)
    a = coefficients(audio, order=16, gamma=0.9, preemphasis=0.85)
    e = mu_law_decode(mu_law_encode(lpc.excitation(audio, a, HOP)))
    exact = lpc.Synthesis(16, HOP)
    exact.add_frames(a)
    np.testing.assert_allclose(exact(lpc.excitation(audio, a, HOP))[:, 0], audio, atol=1e-5)
    whole = lpc.Synthesis(16, HOP)
    whole.add_frames(a)
    offline = whole(e)
    stream, cuts, fed = lpc.Synthesis(16, HOP), [0, 1, 2, 79, 80, 81, 513, 4000, 7999, 8000], 0
    pieces = []
    for lo, hi in zip(cuts, cuts[1:]):
        need = -(-hi // HOP)  # frames arrive only as far as the samples need them
        stream.add_frames(a[fed:need])
        fed = need
        pieces.append(stream(e[lo:hi]))
    np.testing.assert_array_equal(np.concatenate(pieces), offline)
    stream.reset()
    with pytest.raises(IndexError, match="has not arrived"):
        stream(e[:10])


def test_compiled_and_python_loops_agree_and_keep_streams_apart():
    assert kernel_module() is not None and hasattr(kernel_module(), "lpc_synthesis"), "the compiled filter is not built"
    audio = resonance(1200.0, 0.9, n=4000, seed=3)
    a = coefficients(audio, order=12, gamma=0.9)
    pair = np.stack([lpc.excitation(audio, a, HOP), -0.5 * lpc.excitation(audio, a, HOP)], axis=1)
    both = lpc.Synthesis(12, HOP, streams=2)
    both.add_frames(np.stack([a, a], axis=1))
    compiled = both(pair)
    fallback = lpc.Synthesis(12, HOP, streams=2)
    fallback._kernel = None  # the loop used where the extension is not built
    fallback.add_frames(np.stack([a, a], axis=1))
    np.testing.assert_array_equal(fallback(pair), compiled)
    np.testing.assert_allclose(compiled[:, 1], -0.5 * compiled[:, 0], rtol=1e-12, atol=1e-15)


def test_excitation_model_streams_and_scores_like_training(built, reference):
    synth = Synthesizer.load(built / "lpc")
    assert synth.manifest.lpc_order == 8 and synth.manifest.deemphasis == 0.85
    mel = reference[0]["mel"]
    offline = np.concatenate(list(synth.stream(mel, speaker="bob", seed=3)))
    blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, speaker="bob", seed=3, block=41))),
                                  offline)
    litert = Synthesizer.load(built / "lpc", engine="litert")
    np.testing.assert_allclose(np.concatenate(list(litert.stream(mel, speaker="bob", seed=3))), offline, atol=1e-6)
    # the evaluation computes the excitation targets exactly as training did
    tf_nll = json.loads((built / "lpc_tf_eval.json").read_text())
    result = evaluate_folder(synth, built / "val")
    assert result["samples"] == tf_nll["samples"]
    assert abs(result["nll_bits_per_sample"] - tf_nll["nll_bits_per_sample"]) < 1e-3


@pytest.mark.parametrize("compiled", [True, False])
def test_input_classes_are_what_the_stepwise_rows_read(compiled):
    # training's vectorised s[t], p[t+1] (input_classes) and the runtime's per-step filter (InputRows) on the same
    # classes: the same bits at every position, so a teacher-forced runtime sees exactly the training inputs
    rng = np.random.default_rng(4)
    audio = preemphasize(resonance(900.0, 0.95, n=2400, seed=4), 0.85)
    a = coefficients(audio, order=16, gamma=0.9, preemphasis=0.85)
    classes = mu_law_encode(lpc.excitation(audio, a, HOP) + rng.normal(0, 0.01, audio.shape))
    expected = lpc.input_classes(classes, a, HOP, 256)
    assert expected.shape == (2400, 2) and len(np.unique(expected[:, 1])) > 40  # p spans many classes
    eye, zero = np.eye(256, dtype=np.float32), np.zeros((256, 256), np.float32)
    # one-hot tables: a row's first half names its s class, its second half its p class
    rows = lpc.InputRows((np.hstack([zero, zero]), np.hstack([eye, zero]), np.hstack([zero, eye])), 16, HOP, 1)
    assert (rows._kernel is not None) == (rows._feed is not None) == (kernel_module() is not None)
    if not compiled:
        rows._kernel = rows._feed = None  # numpy's rows and filter steps, where the extension is not built
    rows.filter.add_frames(a)
    rows.push(classes[:1])  # teacher forcing: the filter starts at the first sample, as in training
    got = []
    for current, following in zip(classes[:-1], classes[1:]):
        row = rows.row(np.array([current], np.int64))[0]
        got.append((row[:256].argmax(), row[256:].argmax()))
        rows.push(np.array([following]))
    np.testing.assert_array_equal(np.array(got), expected[:-1])
    assert expected[-1, 1] == 128  # p[T] lies past the last frame: silence


def test_compiled_rows_of_two_streams_quantize_like_the_port():
    # an int8 graph's rows: the compiled sum and quantization give the bytes Port.quantize gives numpy's sum
    from edge_runtime.graph import Port

    port = Port({"index": 0, "dtype": np.int8, "shape": (2, 32), "quantization": (0.0123, 3)})
    rng = np.random.default_rng(7)
    tables = tuple(rng.normal(0, 0.5, (256, 32)).astype(np.float32) for _ in range(3))
    a = rng.normal(0, 0.2, (3, 8))
    samples = rng.integers(0, 256, (241, 2))
    outputs = []
    for compiled in (True, False):
        rows = lpc.InputRows(tables, 8, HOP, 2, port)
        if not compiled:
            rows._kernel = rows._feed = None
        rows.filter.add_frames(np.stack([a, 0.5 * a], axis=1))  # [frames, B, p]: other coefficients per stream
        seen = []
        for previous, generated in zip(samples[:-1], samples[1:]):
            seen.append(rows.row(previous).copy())
            rows.push(generated)
        outputs.append(np.array(seen))
    assert outputs[0].dtype == np.int8 and np.ptp(outputs[0].astype(int)) > 100  # most of the int8 range
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_lpc_inputs_model_scores_and_streams_like_training(built):
    with np.load(built / "lpcin_reference.npz") as data:
        case = {k: data[k] for k in data.files}
    tf_nll, results = json.loads((built / "lpcin_tf_eval.json").read_text()), []
    # float32 on both engines (the native loop runs the synthesis filter in C), int8 on LiteRT
    for variant, engine, tolerance, nll_gap in (("float32", "native", 1e-5, 1e-4), ("float32", "litert", 1e-5, 1e-4),
                                                ("int8", "auto", 0.05, 0.02)):
        synth = Synthesizer.load(built / f"lpcin_{variant}", engine=engine)
        assert synth.manifest.version == 3 and synth.engine.startswith("native" if engine == "native" else "litert")
        logits = synth.teacher_forced_logits(case["classes"], case["mel"], "alice")
        error = np.abs(logits - case["logits"]).max() / np.ptp(case["logits"])
        assert error < tolerance, (variant, error)
        result = evaluate_folder(synth, built / "val")
        assert result["samples"] == tf_nll["samples"]
        assert abs(result["nll_bits_per_sample"] - tf_nll["nll_bits_per_sample"]) < nll_gap, (variant, result)
        mel = case["mel"]
        offline = np.concatenate(list(synth.stream(mel, seed=5)))
        blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
        np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, seed=5, block=37))), offline)
        assert offline.shape == (case["classes"].shape[0],) and 0.01 < np.abs(offline).max() <= 1
        if variant == "float32":
            results.append(offline)
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)  # native == LiteRT


def test_native_lpc_rows_are_checked_against_litert_at_load(built, monkeypatch):
    from edge_runtime import native

    synth = Synthesizer.load(built / "lpcin_float32", engine="native")
    assert synth._compare_engines(synth._native) < 1e-5  # rows from random coefficients and classes agree
    # a C filter fed the wrong µ-law decode builds other s and p rows: the load-time check refuses it
    monkeypatch.setattr(native, "mu_law_decode", lambda classes, q: np.zeros(q, np.float32))
    refused = Synthesizer.load(built / "lpcin_float32")
    assert refused.engine == "litert" and refused.engine_note.startswith("it differs from LiteRT")


@pytest.mark.parametrize("engine", ["native", "litert"])
@pytest.mark.parametrize("model, tables", [("lpcin", ("signal_embedding", "prediction_embedding")),
                                           ("period", ("period_embedding",))])  # format 4's (test_period.py)
def test_input_row_tables_change_the_logits(built, tmp_path, engine, model, tables):
    # the extra row tables are read: zeroing them moves every teacher-forced logit row (a tiny model's little;
    # the period table's too, though its class is silence's until the first period has passed)
    from edge_runtime.manifest import encode_array

    with np.load(built / f"{model}_reference.npz") as data:
        classes, mel = data["classes"][:400], data["mel"]

    def zero_tables(d):
        for name in tables:
            shape = d["tables"][name]["shape"]
            d["tables"][name] = encode_array(np.zeros(shape, np.float32))

    plain = Synthesizer.load(edited_model(built / f"{model}_float32", tmp_path, zero_tables), engine=engine)
    logits = Synthesizer.load(built / f"{model}_float32", engine=engine).teacher_forced_logits(classes, mel, "alice")
    zeroed = plain.teacher_forced_logits(classes, mel, "alice")
    moved = np.abs(logits - zeroed).max(axis=1) / np.ptp(logits)  # per row; the engines agree to ~1e-7
    assert moved.min() > 1e-4 and moved.mean() > 1e-3, (moved.min(), moved.mean())


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tables"].pop("prediction_embedding"),
     "the signal_embedding, prediction_embedding tables must be given"),
    (lambda d: d["tables"].update(signal_embedding=d["tables"]["speaker_bias"]), "each of shape"),
    (lambda d: d.update(format_version=2), "an lpc_inputs model is format 3, and only such a model"),
    (lambda d: d["config"].update(lpc_inputs=False), "an lpc_inputs model is format 3"),
    (lambda d: d.update(postfilter=[d["postfilter"][1]]) or d["config"].update(lpc_order=0),
     "format 3 .LPC inputs. needs an LPC postfilter"),
])
def test_bad_lpc_inputs_manifests_are_model_errors(built, tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        load_manifest(edited_model(built / "lpcin_float32", tmp_path, change))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(postfilter=[{"type": "deemphasis", "coefficient": 0.85}]), "does not match the model's lpc"),
    (lambda d: d["postfilter"][0].update(order=12), "does not match the model's lpc"),
    (lambda d: d["postfilter"][0].update(order=True), r"LPC order must be an integer in \[0, 32\]"),
    (lambda d: d.update(postfilter=d["postfilter"][::-1]), "must be distinct, in the order lpc, formant, deemphasis"),
    (lambda d: d["postfilter"].append({"type": "comb"}), "unknown postfilter 'comb'"),
])
def test_bad_lpc_postfilters_are_model_errors(built, tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        load_manifest(edited_model(built / "lpc", tmp_path, change))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["config"].pop("fmin"), "KeyError: 'fmin'"),
    (lambda d: d["config"].update(n_fft="512"), "TypeError"),
    # found by tools/fuzz.py: an n_fft of 512 000 made the envelope basis ask for 488 GiB (a MemoryError)
    (lambda d: d["config"].update(n_fft=512000), r"ValueError: n_fft must be in \[2, 16384\], got 512000"),
])
def test_front_end_fields_the_predictor_reads_are_checked_at_load(built, tmp_path, change, message):
    # found by tools/fuzz.py: without this a damaged field failed with a KeyError at the first mel frame
    with pytest.raises(ModelError, match=f"malformed .*{message}"):
        Synthesizer.load(edited_model(built / "lpc", tmp_path, change))
