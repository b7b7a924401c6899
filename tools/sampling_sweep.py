"""Sampling settings measured on a voice: temperature, LPCNet's probability floor and voicing-dependent
sharpening, PESQ-NB / STOI per setting.

    python tools/sampling_sweep.py edge_runtime/models/pi --data ../shared/data/fsdd/recordings \
        --settings 0.5:0,0.5:0.005,0.35:0,1.0:0.002:1 [--limit 60] [--json out.json]

A setting ``T:floor[:sharpen]`` samples from p = softmax(c * logits / T) with ``floor`` subtracted from every
probability (negative ones dropped, the rest renormalised: LPCNet's ``sample_from_pdf`` threshold). ``c`` is 1
unless ``sharpen`` > 0: then, at every mel frame, ``c = 1 + sharpen * max(0, 1.5 g - 0.5)`` (the LPCNet paper's
rule) with ``g`` a voicing estimate the runtime can have, causally: the largest normalised autocorrelation of the
last generated samples (decoded µ-law, before any postfilter: for an LPC voice the excitation, a pulse train when
voiced) over pitch lags of 2.5-20 ms. ``T:0`` is the runtime's own sampling. Each clip is copy-synthesized with
seeds 0 and 1 and scored against its recording; every setting is paired per clip with the first. The floor needs
the probabilities, which the native engine's loop does not expose, so the voice runs through LiteRT here (same
graphs, same noise: the Gumbel draws of a seed are the runtime's). An experiment, not a runtime option: results
in docs/training-experiments.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_runtime.audio import front_end_params  # noqa: E402
from edge_runtime.corpus import load_wav_folder  # noqa: E402
from edge_runtime.errors import InputError  # noqa: E402
from edge_runtime.synth import Synthesizer  # noqa: E402
from quality_report import paired, score  # noqa: E402


VOICING_WINDOW_S = 0.03  # the last 30 ms of samples compared with themselves one pitch period earlier
PITCH_LAGS_S = (0.0025, 0.02)  # 50-400 Hz


def voicing(history: np.ndarray, window: int, lags: range) -> float:
    """Largest normalised autocorrelation, clipped to [0, 1], of the last ``window`` samples of ``history`` with
    the same span ``lag`` samples earlier, over ``lags`` (``history`` holds at least window + max lag samples)."""
    now = history[-window:]
    past = np.lib.stride_tricks.sliding_window_view(history[:-1], window)[::-1][lags.start - 1:lags.stop - 1]
    energy = (past * past).sum(axis=1) * float(now @ now)
    corr = (past @ now) / np.sqrt(np.maximum(energy, 1e-12))
    return float(np.clip(corr.max(), 0.0, 1.0))


class FlooredSynthesizer(Synthesizer):
    """The runtime's one-stream LiteRT loop with the sampling step replaced (``floor`` or ``sharpen`` > 0) by a
    floored, voicing-sharpened pdf."""

    floor, sharpen, temperature_now = 0.0, 0.0, 0.5

    def _run_single(self, n: int, cond: np.ndarray | None, noise: np.ndarray | None) -> np.ndarray:
        if not (self.floor or self.sharpen) or noise is None:
            return super()._run_single(n, cond, noise)
        views, invoke = self._views, self._invoke
        state, logits, new = views["state"], views["logits"][0], views["new_state"]
        cond_in = views["cond"] if cond is not None else None
        mask, n_layers = self._ring - 1, self._hist.shape[1]
        flat = self._hist.reshape(self._ring * n_layers, -1)
        # the runtime's noise is g * T / scale (Gumbel g, float logits: scale 1), so g = noise / T
        gumbel = noise[:, 0] / self.temperature_now
        prev, t, samples = int(self._prev[0]), self._t, []
        if t == 0:
            self._generated, self._c = [], 1.0  # decoded samples so far; c of the current mel frame
        for i in range(n):
            if self.sharpen and t % self._hop == 0:  # once per frame, so chunking does not change c
                self._c = self._sharpness()
            pos = t & mask
            flat[pos * n_layers] = self._embedding[prev]
            flat.take(self._take_rows[pos], axis=0, out=state)
            if cond_in is not None:
                cond_in[...] = cond[i]
            invoke()
            flat[pos * n_layers + 1:(pos + 1) * n_layers] = new
            prev = self._draw(logits, gumbel[i], self._c / self.temperature_now)
            samples.append(prev)
            self._generated.append(self._decode[prev])
            t += 1
        self._prev, self._t = np.array([prev]), t
        return np.array(samples, np.int64)[:, None]

    def _sharpness(self) -> float:
        """c = 1 + sharpen * max(0, 1.5 g - 0.5) from the voicing of the samples generated so far."""
        span = self._window + self._lags.stop - 1
        recent = self._generated[-span:]
        history = np.concatenate([np.zeros(span - len(recent)), recent])  # silence before the first sample
        g = voicing(history, self._window, self._lags)
        return 1.0 + self.sharpen * max(0.0, 1.5 * g - 0.5)

    def _draw(self, logits: np.ndarray, gumbel: np.ndarray, inv_t: float) -> int:
        """Gumbel-max from softmax(logits * inv_t), minus the floor when there is one."""
        if not self.floor:
            return int((logits * inv_t + gumbel).argmax())
        p = np.exp((logits - logits.max()) * inv_t)
        kept = np.maximum(p / p.sum() - self.floor, 0.0)
        if not kept.any():  # every class under the floor (a near-flat pdf): the most likely one
            return int(p.argmax())
        with np.errstate(divide="ignore"):
            return int((np.log(kept) + gumbel).argmax())

    def configure(self, temperature: float, floor: float, sharpen: float) -> None:
        """One setting; the voicing window and pitch lags in samples of this voice's rate.

        Raises InputError for a floor or sharpening on an lpc_inputs model: its steps run in the runtime's general
        loop, which this class does not replace, so the setting would change nothing."""
        if (floor or sharpen) and self._rows is not None:
            raise InputError("a floor or sharpening needs a model without lpc_inputs (the sweep replaces only the "
                             "one-stream loop); temperatures alone work on any model")
        self.temperature_now, self.floor, self.sharpen = temperature, floor, sharpen
        rate = int(self.config["sample_rate"])
        self._hop, self._window = int(self.config["hop_length"]), round(VOICING_WINDOW_S * rate)
        self._lags = range(round(PITCH_LAGS_S[0] * rate), round(PITCH_LAGS_S[1] * rate) + 1)


def summary(per_clip: list[dict], base: list[dict]) -> str:
    """Means, and the paired difference to the first setting (when this is another)."""
    parts = []
    for metric in ("pesq", "stoi"):
        part = f"{metric} {np.mean([c[metric] for c in per_clip if c[metric] is not None]):.3f}"
        pair = paired(per_clip, base, metric) if per_clip is not base else None
        if pair:
            part += (f" ({pair['mean_difference']:+.3f} [{pair['ci95'][0]:+.3f}, {pair['ci95'][1]:+.3f}], "
                     f"wins {pair['wins']}/{pair['clips']})")
        parts.append(part)
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", required=True, help="Folder of recordings.")
    parser.add_argument("--files", default=r"_[0-4]\.wav$", help="Regex of the clips to use (the test split).")
    parser.add_argument("--settings", required=True, help="Comma-separated T:floor[:sharpen]; the first is the base.")
    parser.add_argument("--limit", type=int, default=60, help="Clips, evenly spread over the sorted list.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    synth = FlooredSynthesizer.load(args.model, engine="litert")
    if synth.manifest.data["step"]["inputs"]["state"]["dtype"] != "float32":
        raise SystemExit("error: the sweep reads float logits: use a dynamic or float variant")
    cfg = synth.config
    rate, front_end, hop = int(cfg["sample_rate"]), front_end_params(cfg), int(cfg["hop_length"])
    clips = load_wav_folder(args.data, rate, cfg["trim_db"], synth.manifest.data.get("data", {}).get("speaker_regex"),
                            args.files)
    clips = [(r, s, a[: a.shape[0] // hop * hop]) for r, s, a in clips if a.shape[0] >= 2 * hop]
    clips = [clips[i] for i in np.linspace(0, len(clips) - 1, min(args.limit, len(clips))).round().astype(int)]
    settings = [(list(map(float, setting.split(":"))) + [0.0])[:3] for setting in args.settings.split(",")]
    try:
        for setting in settings:  # every setting checked before the first clip
            synth.configure(*setting)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    results = {}
    for setting, (temperature, floor, sharpen) in zip(args.settings.split(","), settings):
        synth.configure(temperature, floor, sharpen)
        per_clip = []
        for _, speaker, audio in clips:
            mel, gain = synth.features(audio)
            scores = [score(audio, np.concatenate(list(synth.stream(mel, speaker=speaker if synth.use_speaker else None,
                                                                     temperature=temperature, seed=seed, gain=gain))),
                            rate, front_end) for seed in (0, 1)]
            per_clip.append({m: float(np.mean(v)) if (v := [s[m] for s in scores if s[m] is not None]) else None
                             for m in ("pesq", "stoi")})
        results[setting] = per_clip
        label = f"T {temperature:g} floor {floor:g} sharpen {sharpen:g}"
        print(f"{label}: {summary(per_clip, list(results.values())[0])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "clips": len(clips), "results": results}, indent=1))


if __name__ == "__main__":
    main()
