"""README figures of the shipped model: an original clip next to its resynthesis, and the training curve.

    python tools/figures.py --out docs [--clip edge_runtime/examples/5_lucas_0.wav] [--model MODEL_DIR]

Writes ``resynthesis.png`` (waveform and spectrogram of the clip and of the edge runtime's copy synthesis) and
``training-curve.png`` (validation NLL over steps, from ``edge_runtime/models/training.json``). Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.audio import analysis_window  # noqa: E402
from edge_runtime.corpus import speaker_of  # noqa: E402
from edge_runtime.synth import Synthesizer, default_model_dir, example_clips  # noqa: E402
from edge_runtime.wavio import read_wav  # noqa: E402


def spectrogram_db(audio: np.ndarray, n_fft: int = 256, hop: int = 32) -> np.ndarray:
    """Magnitude spectrogram in dB [bins, frames] for display (finer than the model's front end)."""
    window = analysis_window(n_fft, n_fft)
    frames = 1 + max(0, audio.shape[0] - n_fft) // hop
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = np.abs(np.fft.rfft(np.pad(audio, (0, n_fft))[idx] * window, axis=-1)).T
    return 20 * np.log10(np.maximum(spec, 1e-5))


def resynthesis_figure(clip: Path, model_dir: Path, out: Path, temperature: float, seed: int) -> None:
    """Original vs copy synthesis: waveforms on top, spectrograms below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synth = Synthesizer.load(model_dir)
    audio, rate = read_wav(clip)
    mel, gain = synth.features(audio)
    regex = synth.manifest.data.get("data", {}).get("speaker_regex")
    speaker = speaker_of(clip, clip.parent, regex) if synth.use_speaker else None
    generated = np.concatenate(list(synth.stream(mel, speaker=speaker, temperature=temperature, seed=seed, gain=gain)))
    audio = audio[: generated.shape[0]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 5.5), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    variant = synth.manifest.data["variant"]
    for col, (title, x) in enumerate([(f"original: {clip.name}", audio),
                                      (f"WaveNet {synth.config['name']} {variant}, edge runtime (T={temperature})",
                                       generated)]):
        t = np.arange(x.shape[0]) / rate
        axes[0, col].plot(t, x, linewidth=0.5, color="tab:blue" if col == 0 else "tab:orange")
        axes[0, col].set_title(title, fontsize=10)
        axes[0, col].set_ylim(-1.05 * np.abs(audio).max(), 1.05 * np.abs(audio).max())
        spec = spectrogram_db(x)
        axes[1, col].imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=spec.max() - 80, vmax=spec.max(),
                            extent=[0, x.shape[0] / rate, 0, rate / 2])
        axes[1, col].set_xlabel("seconds")
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel("Hz")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fine_tune_changes(card: dict) -> list[tuple[int, dict]]:
    """(step, model changes) of each fine-tuning leg in a model card's history (tools/ship_model.py's
    ``finetune`` entries, nested under ``continues``) that changed more than the schedule."""
    legs = []
    while card:
        leg = card.get("finetune") or {}
        if leg.get("model_changes"):
            legs.append((leg["from_step"], leg["model_changes"]))
        card = card.get("continues")
    return sorted(legs, key=lambda leg: leg[0])


def training_curve_figure(training_json: Path, out: Path) -> None:
    """Validation NLL (and training loss) over steps, with the µ-law unigram entropy for scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = json.loads(training_json.read_text())
    changes = fine_tune_changes(card)
    fig, ax = plt.subplots(figsize=(7, 4))
    # a leg that changed the inputs or the targets starts a new line: NLLs on either side measure different things
    bounds = [-1] + [step for step, _ in changes] + [card["step"]]
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        leg = [c for c in card["curve"] if lo < c["step"] <= hi]
        ax.plot([c["step"] for c in leg], [c["val_nll_bits"] for c in leg], marker="o", color="C0",
                label="validation NLL (held-out files 0–4)" if k == 0 else None)
        train = [(c["step"], c["train_loss_bits"]) for c in leg if c.get("train_loss_bits") is not None]
        if train:
            ax.plot(*zip(*train), linestyle="--", color="C1", label="training loss (last 250 steps)" if k == 0 else None)
    for step, changed in changes:
        ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        ax.annotate(", ".join(f"{k} {v[1]}" for k, v in changed.items()), (step, 0.5), xycoords=("data", "axes fraction"),
                    xytext=(-9, 0), textcoords="offset points", fontsize=7, color="grey", rotation=90, va="center")
    ax.set_xlabel("step (batch 8 × 3200 scored samples)")
    ax.set_ylabel("bits per sample")
    # steps, not hours: a run resumed across sessions and paused for other jobs has a wall time that says little
    ax.set_title(f"preset {card['preset']}: validation NLL up to step {card['step']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--model", type=Path, default=None, help="Model folder (default: the shipped model).")
    parser.add_argument("--clip", type=Path, default=None, help="Recording (default: the lucas example).")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = args.model or default_model_dir()
    clip = args.clip or next((c for c in example_clips() if "_lucas_" in c.name), example_clips()[0])
    args.out.mkdir(parents=True, exist_ok=True)
    resynthesis_figure(clip, model, args.out / "resynthesis.png", args.temperature, args.seed)
    training_curve_figure(Path(model).parent / "training.json", args.out / "training-curve.png")
    print(f"wrote {args.out / 'resynthesis.png'} and {args.out / 'training-curve.png'}")


if __name__ == "__main__":
    main()
