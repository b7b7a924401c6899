"""The edge runtime against the TensorFlow model: equivalence, quantization bounds, streaming, sampling."""

import json

import numpy as np
import pytest

from edge_runtime.evaluate import evaluate_folder, log_softmax
from edge_runtime.manifest import load_manifest
from edge_runtime.synth import Synthesizer
from tests.helpers import assert_edge_tpu_graph

RECEPTIVE_FIELD = 16  # tiny preset


def kl_and_agreement(logits, ref):
    lp, rp = log_softmax(logits), log_softmax(ref)
    return float((np.exp(rp) * (rp - lp)).sum(-1).mean()), float((logits.argmax(-1) == ref.argmax(-1)).mean())


def runtime_logits(folder, case):
    return Synthesizer.load(folder).teacher_forced_logits(case["classes"], case["mel"], int(case["speaker"]))


def test_float32_runtime_equals_the_keras_model(built, reference):
    # Full Keras model == TFLite float32 through the ring buffers, with mel and speaker conditioning on.
    assert all(len(c["classes"]) > 2 * RECEPTIVE_FIELD for c in reference)
    worst = max(np.abs(runtime_logits(built / "models/float32", c) - c["reference"]).max() for c in reference)
    assert worst <= 1e-4
    assert max(np.abs(c["reference"]).max() for c in reference) > 1.0  # a trained model, not near-zero logits


@pytest.mark.parametrize("variant, max_abs, max_kl, min_agree", [
    ("float16", 0.05, 1e-4, 0.99),   # measured: KL 2e-6, agreement 0.998
    ("dynamic", 3.0, 0.01, 0.85),    # measured: max 2.1 (on very unlikely classes), KL 3.7e-3, agreement 0.91
])
def test_weight_quantized_variants_stay_close(built, reference, variant, max_abs, max_kl, min_agree):
    logits = np.concatenate([runtime_logits(built / "models" / variant, c) for c in reference])
    ref = np.concatenate([c["reference"] for c in reference])
    kl, agree = kl_and_agreement(logits, ref)
    assert np.abs(logits - ref).max() <= max_abs and kl <= max_kl and agree >= min_agree, (kl, agree)


def test_int8_agreement_and_kl(built, reference):
    logits = np.concatenate([runtime_logits(built / "models/int8", c) for c in reference])
    ref = np.concatenate([c["reference"] for c in reference])
    kl, agree = kl_and_agreement(logits, ref)
    assert kl <= 0.05 and agree >= 0.6, (kl, agree)  # measured: KL 0.018, agreement 0.70


def test_nll_ratios_against_float32(built):
    report = json.loads((built / "models/report.json").read_text())["variants"]
    f32 = report["float32"]["nll_bits_per_sample"]
    assert report["dynamic"]["nll_bits_per_sample"] / f32 <= 1.01
    assert report["int8"]["nll_bits_per_sample"] / f32 <= 1.03
    assert abs(f32 - json.loads((built / "tf_eval.json").read_text())["nll_bits_per_sample"]) < 1e-4


def test_eval_of_the_exported_model_matches_the_tf_eval(built):
    tf_nll = json.loads((built / "tf_eval.json").read_text())
    result = evaluate_folder(Synthesizer.load(built / "models/float32"), built / "val")
    assert result["samples"] == tf_nll["samples"]
    assert abs(result["nll_bits_per_sample"] - tf_nll["nll_bits_per_sample"]) < 1e-3


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_streaming_equals_offline(built, reference, variant):
    synth = Synthesizer.load(built / "models" / variant)
    mel = reference[0]["mel"]
    offline = np.concatenate(list(synth.stream(mel, speaker="bob", seed=5)))
    assert offline.shape == (mel.shape[0] * 32,) and offline.dtype == np.float32
    for size in (1, 7):
        blocks = (mel[i:i + size] for i in range(0, mel.shape[0], size))
        np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, speaker="bob", seed=5))), offline)
    frames = (frame for frame in mel)  # single frames of shape [n_mels]
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(frames, speaker=1, seed=5))), offline)


def test_seed_temperature_and_speaker_change_the_audio(built, reference):
    synth = Synthesizer.load(built / "models/dynamic")
    mel = reference[0]["mel"]
    run = lambda **kw: np.concatenate(list(synth.stream(mel, **kw)))  # noqa: E731
    a, b = run(seed=1), run(seed=2)
    assert not np.array_equal(a, b) and np.array_equal(a, run(seed=1))
    greedy = run(temperature=0.0, seed=1)
    np.testing.assert_array_equal(greedy, run(temperature=0.0, seed=99))  # no noise at T = 0
    assert not np.array_equal(run(speaker="alice", seed=1), run(speaker="bob", seed=1))
    assert np.abs(a).max() <= 1.0 and np.abs(a).mean() > 0.01  # it makes sound, in range


def test_batched_model_runs_independent_streams(built, reference):
    # Batch 2: stream 1 is the same utterance as stream 0 -> with teacher-forced-free greedy decoding both
    # streams must produce identical audio to the batch-1 model's greedy output.
    single = Synthesizer.load(built / "models/dynamic")
    pair = Synthesizer.load(built / "models_b2")
    mel = reference[0]["mel"]
    greedy = np.concatenate(list(single.stream(mel, speaker="alice", temperature=0.0)))
    both = np.concatenate(list(pair.stream(np.stack([mel, mel], axis=1), speaker=["alice", "alice"],
                                           temperature=0.0)))
    assert both.shape == (greedy.shape[0], 2)
    np.testing.assert_array_equal(both[:, 0], greedy)
    np.testing.assert_array_equal(both[:, 1], greedy)


def test_unconditioned_model_generates_free_audio(built):
    synth = Synthesizer.load(built / "uncond")
    audio = np.concatenate(list(synth.stream(seconds=0.3, seed=4, block=500)))
    assert audio.shape == (2400,)
    np.testing.assert_array_equal(audio, np.concatenate(list(synth.stream(seconds=0.3, seed=4, block=77))))


def test_manifest_contents(built):
    m = load_manifest(built / "models/int8")
    data = m.data
    assert data["format_version"] == 2 and data["variant"] == "int8" and data["speakers"] == ["alice", "bob"]
    assert data["dilations"] == [1, 2, 4, 8] and data["state"]["rows"] == [[0, 0], [0, 1], [1, 2], [2, 4], [3, 8]]
    assert set(data["step"]["inputs"]) == {"cond", "state"} and data["step"]["inputs"]["cond"]["shape"] == [4, 32]
    assert set(data["conditioner"]["inputs"]) == {"mel", "speaker_bias"}  # it adds the speakers' gate biases
    assert data["conditioner"]["outputs"]["cond"]["shape"] == [1, 4 * 32, 4 * 32]  # every layer's gate input
    assert all(p["dtype"] == "int8" and p["scale"] > 0 for p in data["step"]["inputs"].values())
    assert data["conditioner"]["lookahead_frames"] == 3 and data["conditioner"]["inputs"]["mel"]["shape"] == [1, 4 + 2 * 3, 16]
    assert m.embedding.shape == (256, 16) and m.speaker_bias.shape == (2, 4, 32)
    assert data["producer"]["checkpoint"].startswith("ckpt-") and data["producer"]["tensorflow"].startswith("2.")


def test_int8_step_graph_is_edge_tpu_compatible(built):
    assert_edge_tpu_graph(built / "models/int8/step.tflite", layers=4)


def test_format_versions(built, tmp_path):
    # Exports write format 2 (3 for lpc_inputs models: test_lpc.py, 4 with a period input: test_period.py); format
    # 1 (the voices shipped until the LPC re-ship: tests/data/format1) still runs (test_native.py). Any other
    # version, or a graph that does not have the inputs its version says, is one clean ModelError.
    import shutil

    from edge_runtime.errors import ModelError

    model = shutil.copytree(built / "models/float32", tmp_path / "model")
    data = json.loads((model / "manifest.json").read_text())
    for version, message in [(5, "format version 5; this runtime reads versions 1, 2, 3, 4"),
                             ("2", "format version '2'"), (3, "an lpc_inputs model is format 3, and only such a model"),
                             (4, "a period_input model is format 4, and only such a model"),
                             (1, "step.tflite has inputs")]:
        (model / "manifest.json").write_text(json.dumps(dict(data, format_version=version)))
        with pytest.raises(ModelError, match=message):
            Synthesizer.load(model)
