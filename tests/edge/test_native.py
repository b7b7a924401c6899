"""The native engine (the compiled step loop, edge_runtime/_stepkernel.c) against LiteRT's step graph."""

from pathlib import Path

import numpy as np
import pytest

from edge_runtime import native
from edge_runtime.errors import ModelError
from edge_runtime.synth import Synthesizer, default_model_dir, example_clips

def forced_logits(folder, case, engine):
    synth = Synthesizer.load(folder, engine=engine)
    return synth, synth.teacher_forced_logits(case["classes"], case["mel"], int(case["speaker"]))


def test_the_extension_is_built():
    # tools/setup.sh builds it (pip compiles edge_runtime/_stepkernel.c); without a compiler the package installs
    # without it and runs LiteRT, which the tests below would not notice: so its absence here is a failure.
    assert native.kernel_module() is not None, "edge_runtime._stepkernel is not built: pip install -e . with gcc"


@pytest.mark.parametrize("kernels", ["best", "generic"])
@pytest.mark.parametrize("variant, tolerance", [("float32", 1e-5), ("float16", 1e-5), ("dynamic", 1e-5)])
def test_native_equals_litert(built, reference, variant, tolerance, kernels, monkeypatch):
    # Teacher-forced logits over whole utterances (every dilation's taps read real history), mel and speaker
    # conditioning on. Dynamic-range graphs too: the engine quantizes each product's input exactly as XNNPACK.
    if kernels == "generic":
        monkeypatch.setenv("WAVENET_EDGE_KERNELS", "generic")
    for case in reference:
        synth, ours = forced_logits(built / "models" / variant, case, "native")
        assert synth.engine == ("native (generic)" if kernels == "generic" else f"native ({synth._native.kernels})")
        _, theirs = forced_logits(built / "models" / variant, case, "litert")
        spread = np.ptp(theirs)
        assert spread > 1.0
        worst = np.abs(ours - theirs).max(axis=1) / spread  # per time step
        if variant != "dynamic":
            assert worst.max() <= tolerance
        else:
            # a product's input value that lands within float rounding of a quantization step's edge can round
            # to the neighbouring int8 code in one engine: rare, and worth one code step of that input
            print(f"{variant}: steps above tolerance {np.mean(worst > tolerance):.2e}, worst {worst.max():.1e}")
            assert np.mean(worst > tolerance) <= 1e-2 and worst.max() <= 5e-3  # measured: 2.2e-3 of steps, 1.5e-3


def test_auto_picks_native_where_it_applies(built):
    assert Synthesizer.load(built / "models/dynamic").engine.startswith("native")
    int8 = Synthesizer.load(built / "models/int8")
    assert int8.engine == "litert" and "int8" in int8.engine_note
    batch = Synthesizer.load(built / "models_b2")
    assert batch.engine == "litert" and "batch" in batch.engine_note
    assert Synthesizer.load(built / "models/dynamic", engine="litert").engine_note == "asked for"
    with pytest.raises(ModelError, match="native engine cannot run this model: full-integer"):
        Synthesizer.load(built / "models/int8", engine="native")


def test_a_graph_it_does_not_reproduce_is_refused(built, monkeypatch):
    # The load-time comparison is what guards a graph the weight reader misreads: with a tolerance nothing meets,
    # auto falls back to LiteRT and says why, native is an error.
    monkeypatch.setattr(native, "TOLERANCE", -1.0)
    synth = Synthesizer.load(built / "models/float32")
    assert synth.engine == "litert" and synth.engine_note.startswith("it differs from LiteRT")
    with pytest.raises(ModelError, match="differs from LiteRT"):
        Synthesizer.load(built / "models/float32", engine="native")


def test_a_misread_weight_is_refused_although_rounding_flips_are_not(built, monkeypatch):
    # The check keeps the best of several random draws, so that an int8 code rounding the other way in one draw
    # (float sums in another order) does not refuse a good graph; a misread weight is off in every draw.
    synth = Synthesizer.load(built / "models/dynamic", engine="native")
    assert synth._compare_engines(synth._native) < 1e-5  # float rounding only
    real = native._weights

    def misread(path):
        found = real(path)
        w, scales, bias = found[6]
        found[6] = (np.concatenate([w[:3], np.zeros_like(w[3:4]), w[4:]]), scales, bias)  # one output's row lost
        return found

    monkeypatch.setattr(native, "_weights", misread)
    synth = Synthesizer.load(built / "models/dynamic")
    assert synth.engine == "litert" and synth.engine_note.startswith("it differs from LiteRT")


@pytest.mark.parametrize("folder", ["models/dynamic", "uncond", "emph"])
def test_native_streaming_equals_offline_and_seeds_repeat(built, reference, folder):
    synth = Synthesizer.load(built / folder)
    assert synth.engine.startswith("native")
    mel = None if folder == "uncond" else reference[0]["mel"]
    kwargs = {"seconds": 0.1} if mel is None else {"speaker": 1}
    offline = np.concatenate(list(synth.stream(mel, seed=5, **kwargs)))
    if mel is not None:
        blocks = (mel[i:i + 3] for i in range(0, mel.shape[0], 3))
        np.testing.assert_array_equal(np.concatenate(list(synth.stream(blocks, seed=5, **kwargs))), offline)
    np.testing.assert_array_equal(np.concatenate(list(synth.stream(mel, seed=5, block=17, **kwargs))), offline)
    assert not np.array_equal(np.concatenate(list(synth.stream(mel, seed=6, **kwargs))), offline)


FORMAT_1 = Path(__file__).resolve().parents[1] / "data" / "format1"  # the voices shipped before the LPC re-ship
SHIPPED = Path(default_model_dir()).parent


@pytest.mark.parametrize("folder, version, tolerance", [
    (FORMAT_1 / "default-float16", 1, 1e-5), (FORMAT_1 / "default", 1, 2e-3),
    (SHIPPED / "default-float16", 3, 1e-5), (SHIPPED / "default", 3, 2e-3), (SHIPPED / "pi", 3, 2e-3)])
def test_voices_score_the_same_through_both_engines(folder, version, tolerance):
    # Format 1 (the conditioning enters every layer's product; the voices shipped until the LPC re-ship, kept in
    # tests/data as old model folders a user may have) and format 3 (per-layer gate inputs and LPCNet's inputs;
    # format 2, the same without them, is the fixtures' in the tests above): native reads all.
    # Measured on one clip: float16 equal to 3e-8 bits; dynamic 4.59987 (native) vs 4.60136 bits (LiteRT): on a
    # trained voice an int8 code of some product's input rounds the other way now and then (the float sums
    # differ in order), and the history carries the difference on (as XNNPACK's ARM kernels do, docs/raspberry-pi.md).
    import re

    from edge_runtime.evaluate import evaluate_folder

    clip = example_clips()[0]
    pattern, speakers = f"^{re.escape(clip.name)}$", r"^\d+_(?P<speaker>[a-z]+)_\d+"
    results = {}
    for engine in ("native", "litert"):
        synth = Synthesizer.load(folder, engine=engine)
        assert synth.manifest.version == version and synth.engine.startswith(engine)
        results[engine] = evaluate_folder(synth, clip.parent, speakers, pattern)
    assert results["native"]["samples"] == results["litert"]["samples"] > 1000
    assert abs(results["native"]["nll_bits_per_sample"] - results["litert"]["nll_bits_per_sample"]) < tolerance
