"""Builds the edge suite's models in a process of its own (TensorFlow must not share the tests' process).

    python tests/edge/build_fixture.py OUT_DIR

OUT_DIR/data (generated two-speaker audio), OUT_DIR/val (its validation files), OUT_DIR/run (a tiny model
trained for a few seconds), OUT_DIR/models/{float32,float16,dynamic,int8} (exported), OUT_DIR/models_b2
(dynamic, batch 2), OUT_DIR/uncond (a tiny model without conditioning, float32), OUT_DIR/emph (pre-emphasis,
float32), OUT_DIR/lpc (LPC excitation + pre-emphasis, float32; OUT_DIR/lpc_formant: with the formant postfilter), OUT_DIR/lpcin_{float32,int8} (LPCNet's inputs
too: format 3), OUT_DIR/period_{float32,int8} (and the excitation one period back: format 4),
OUT_DIR/reference.npz (the validation utterances and the float32 TF model's teacher-forced
logits) and OUT_DIR/tf_eval.json.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))


def main(out: Path) -> None:
    from make_demo_data import write_demo_folder

    from convert.export import export
    from training.checkpoint import load_model
    from training.config import Config
    from training.data import load_utterances
    from training.evaluate import NLLScorer, utterance_inputs
    from training.train import DataArgs, train

    data = write_demo_folder(out / "data", speakers=2, files=8, seconds=0.4, rate=8000)
    for f in data.rglob("*_[01].wav"):
        (out / "val" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out / "val" / f.parent.name / f.name)
    quiet = dict(progress=False, log=lambda m: None)
    config = Config.preset("tiny", seed=7, steps=400, val_every=200, checkpoint_every=200)
    train(config, DataArgs(str(data), val_regex=r"_[01]\.wav$"), out / "run", **quiet)
    export(out / "run", out / "models", "all", log=lambda m: None)
    export(out / "run", out / "models_b2", "dynamic", batch=2, log=lambda m: None)

    model, cfg, _ = load_model(out / "run")
    val = load_utterances(out / "val", cfg)
    arrays = {}
    for i, u in enumerate(val):
        arrays.update({f"classes_{i}": u.classes, f"mel_{i}": u.mel, f"speaker_{i}": np.int32(u.speaker),
                       f"reference_{i}": model(utterance_inputs(u, cfg)).numpy()[0, :-1]})
    np.savez(out / "reference.npz", **arrays)
    nll, count = NLLScorer(model, cfg)(val)
    (out / "tf_eval.json").write_text(json.dumps({"nll_bits_per_sample": nll, "samples": count}))

    # A model slower than real time (the paper's size, untrained): for the playback pre-buffer test.
    slow = Config.preset("paper", sample_rate=8000, n_fft=256, win_length=128, hop_length=32, fmax=4000.0,
                         upsample_scales=(4, 8), steps=0)
    train(slow, DataArgs(str(data), val_regex=r"_[01]\.wav$"), out / "slow_run", **quiet)
    export(out / "slow_run", out / "slow", "dynamic", eval_samples=500, log=lambda m: None)

    # Pre-emphasis 0.85, the whole window scored, a cosine schedule, recordings at one peak: the recipe options
    # end to end.
    emph = Config.preset("tiny", seed=5, steps=80, preemphasis=0.85, score_whole_window=True, lr_schedule="cosine",
                         warmup_steps=10, adam_beta2=0.99, val_every=80, checkpoint_every=80, normalize_peak=0.8)
    train(emph, DataArgs(str(data), val_regex=r"_[01]\.wav$"), out / "emph_run", **quiet)
    export(out / "emph_run", out / "emph", "float32", temperature=0.7, log=lambda m: None)
    model, cfg, _ = load_model(out / "emph_run")
    nll, count = NLLScorer(model, cfg)(load_utterances(out / "val", cfg))
    (out / "emph_tf_eval.json").write_text(json.dumps({"nll_bits_per_sample": nll, "samples": count}))

    # Excitation modelling on top of pre-emphasis: the LPC and de-emphasis postfilters in a chain.
    excit = Config.preset("tiny", seed=4, steps=60, preemphasis=0.85, lpc_order=8, val_every=60, checkpoint_every=60)
    train(excit, DataArgs(str(data), val_regex=r"_[01]\.wav$"), out / "lpc_run", **quiet)
    export(out / "lpc_run", out / "lpc", "float32", log=lambda m: None)
    # the same model with the formant postfilter after the LPC synthesis filter
    export(out / "lpc_run", out / "lpc_formant", "float32", formant=(0.6, 0.8), log=lambda m: None)
    model, cfg, _ = load_model(out / "lpc_run")
    nll, count = NLLScorer(model, cfg)(load_utterances(out / "val", cfg))
    (out / "lpc_tf_eval.json").write_text(json.dumps({"nll_bits_per_sample": nll, "samples": count}))

    # LPCNet's inputs (format 3): s[t] and p[t+1] embedded beside the excitation; float32 and int8.
    inputs = Config.preset("tiny", seed=6, steps=60, preemphasis=0.85, lpc_order=8, lpc_inputs=True, val_every=60,
                           checkpoint_every=60)
    input_rows_case(inputs, data, out, "lpcin")
    # The excitation one period back besides them (format 4): pitch features give the lag.
    input_rows_case(inputs.replace(seed=7, steps=40, val_every=40, checkpoint_every=40, pitch_features=True,
                                   period_input=True), data, out, "period")

    plain = Config.preset("tiny", seed=3, steps=60, n_mels=0, speaker_dim=0, val_every=60, checkpoint_every=60)
    train(plain, DataArgs(str(data), val_regex=r"_[01]\.wav$"), out / "uncond_run", **quiet)
    export(out / "uncond_run", out / "uncond", "float32", log=lambda m: None)


def input_rows_case(config, data: Path, out: Path, name: str) -> None:
    """A model whose layer 0 row sums several tables: OUT/NAME_{float32,int8}, its TF NLL on the validation files
    (NAME_tf_eval.json) and the first one's inputs and teacher-forced logits (NAME_reference.npz)."""
    from convert.export import export
    from training.checkpoint import load_model
    from training.data import load_utterances
    from training.evaluate import NLLScorer, utterance_inputs
    from training.train import DataArgs, train

    train(config, DataArgs(str(data), val_regex=r"_[01]\.wav$"), out / f"{name}_run", progress=False,
          log=lambda m: None)
    for variant in ("float32", "int8"):
        export(out / f"{name}_run", out / f"{name}_{variant}", variant, log=lambda m: None)
    model, cfg, _ = load_model(out / f"{name}_run")
    val = load_utterances(out / "val", cfg)
    nll, count = NLLScorer(model, cfg)(val)
    (out / f"{name}_tf_eval.json").write_text(json.dumps({"nll_bits_per_sample": nll, "samples": count}))
    np.savez(out / f"{name}_reference.npz", classes=val[0].classes, mel=val[0].mel, lpc=val[0].lpc,
             logits=model(utterance_inputs(val[0], cfg)).numpy()[0, :-1])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
