"""Copy-synthesis quality of edge models next to classic baselines, on held-out recordings.

    python tools/quality_report.py [MODEL_DIR ...] --data ../shared/data/fsdd/recordings --files '_[0-4]\\.wav$' \\
        --json docs/quality.json --markdown docs/quality.md

Every clip is trimmed like training data and cut to whole frames; its log-mel (the model's front end) is
resynthesised by each model through the edge runtime (``Synthesizer.stream``, several seeds) and by the
baselines computed here on the same clips: the µ-law 8-bit round trip (the ceiling of a 256-class model),
Griffin-Lim from the same mel, and WORLD analysis–synthesis. Each output is scored against the clip with PESQ
(narrow band), STOI and a log-mel distance. Clips too short for PESQ or STOI are counted, not scored, and every
method is also scored on per-speaker concatenations of all clips (long enough for both metrics). With
``--nll`` each model's teacher-forced NLL on the same files is added. Runs without TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_runtime.audio import front_end_params, log_mel  # noqa: E402
from edge_runtime.corpus import load_wav_folder  # noqa: E402
from edge_runtime.errors import EdgeError  # noqa: E402
from edge_runtime.evaluate import evaluate_folder  # noqa: E402
from edge_runtime.synth import Synthesizer, default_model_dir  # noqa: E402
from edge_runtime.files import portable_path, write_text_atomic  # noqa: E402
from edge_runtime.wavio import AtomicWavWriter  # noqa: E402
from quality_metrics import (  # noqa: E402
    f0_track, griffin_lim, log_mel_distance, mu_law_round_trip, pesq_nb, pitch_errors, stoi, world_resynthesis)

GAP_SECONDS = 0.1  # silence between clips in the per-speaker concatenations


def model_label(synth: Synthesizer) -> str:
    """'WaveNet <preset> <variant> (<folder>)' for tables."""
    return f"WaveNet {synth.config['name']} {synth.manifest.data['variant']} ({synth.manifest.folder.name})"


def paired(model: list[dict], baseline: list[dict], metric: str) -> dict | None:
    """Per-clip comparison of a model with a baseline on the clips both could score: wins of the model, mean
    difference and its 95 % interval (normal approximation: a few hundred clips). For an error rate or distance
    (:data:`LOWER_IS_BETTER`) a win is a lower value."""
    pairs = [(m[metric], b[metric]) for m, b in zip(model, baseline) if m[metric] is not None and b[metric] is not None]
    if len(pairs) < 2:
        return None
    diff = np.array([m - b for m, b in pairs])
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    wins = (diff < 0) if metric in LOWER_IS_BETTER else (diff > 0)
    return {"clips": int(diff.size), "wins": int(wins.sum()), "mean_difference": float(diff.mean()),
            "ci95": [float(diff.mean() - half), float(diff.mean() + half)]}


def synthesize(synth: Synthesizer, audio: np.ndarray, speaker: str, temperature: float | None,
               seed: int) -> np.ndarray:
    """Copy synthesis of one clip through the streaming runtime (from the log-mel at the model's level, the
    output back at the clip's)."""
    mel, gain = synth.features(audio)
    return np.concatenate(list(synth.stream(mel, speaker=speaker if synth.use_speaker else None,
                                            temperature=temperature, seed=seed, gain=gain)))


METRICS = ("pesq", "stoi", "lmd_db", "gpe", "vde")
PAIRED = ("pesq", "stoi", "gpe")  # paired per clip with WORLD and with the first model
LOWER_IS_BETTER = frozenset({"lmd_db", "gpe", "vde"})


def score(reference: np.ndarray, output: np.ndarray, rate: int, front_end: dict,
          reference_f0: np.ndarray | None = None) -> dict:
    """PESQ-NB, STOI (None where the clip is too short), log-mel distance and, given ``reference_f0`` (the
    reference's f0 track), the gross pitch and voicing decision error rates of one output (else None: Harvest
    runs at about a third of real time here, too slow to spend on the per-speaker concatenations too)."""
    n = min(reference.shape[0], output.shape[0])
    reference, output = reference[:n], output[:n]
    gpe, vde = (None, None) if reference_f0 is None else pitch_errors(reference_f0, output, rate)
    return {"pesq": pesq_nb(reference, output, rate), "stoi": stoi(reference, output, rate),
            "lmd_db": log_mel_distance(reference, output, front_end), "gpe": gpe, "vde": vde}


def summarize(per_clip: list[dict], per_speaker: list[dict]) -> dict:
    """Means over scorable clips, with counts of unscorable ones, and means over speaker concatenations."""
    out = {"clips": len(per_clip)}
    for metric in METRICS:
        values = [c[metric] for c in per_clip if c[metric] is not None]
        out[metric] = float(np.mean(values)) if values else None
        out[f"{metric}_scored"] = len(values)
        speakers = [s[metric] for s in per_speaker if s[metric] is not None]
        out[f"{metric}_speakers"] = float(np.mean(speakers)) if speakers else None
    return out


def run(models: list[Path], data: str, files: str | None, speaker_regex: str | None, temperature: float | None,
        seeds: list[int], nll: bool, gl_iterations: int, limit: int | None, wav_dir: Path | None, log=print) -> dict:
    """Scores every method on every clip; returns the report dict (see the module docstring)."""
    synths = [Synthesizer.load(m) for m in models]
    first = synths[0]
    cfg = first.config
    rate, front_end = int(cfg["sample_rate"]), front_end_params(cfg)
    for s in synths[1:]:
        if front_end_params(s.config) != front_end:
            raise EdgeError(f"{s.manifest.folder} has another front end than {first.manifest.folder}")
    regex = speaker_regex or first.manifest.data.get("data", {}).get("speaker_regex")
    clips = load_wav_folder(data, rate, cfg["trim_db"], regex, files)
    hop = int(cfg["hop_length"])
    clips = [(rel, spk, a[: a.shape[0] // hop * hop]) for rel, spk, a in clips if a.shape[0] >= 2 * hop]
    if limit and limit < len(clips):
        clips = [clips[i] for i in np.linspace(0, len(clips) - 1, limit).round().astype(int)]
    methods = ["µ-law 8 bit", "Griffin-Lim", "WORLD"] + [model_label(s) for s in synths]
    per_clip: dict[str, list[dict]] = {m: [] for m in methods}
    speakers: dict[str, dict[str, list[np.ndarray]]] = {}
    gap = np.zeros(int(GAP_SECONDS * rate), np.float32)
    timing = {m: 0.0 for m in methods}
    for k, (rel, speaker, audio) in enumerate(clips):
        mel, reference_f0 = log_mel(audio, **front_end), f0_track(audio, rate)
        outputs: dict[str, list[np.ndarray]] = {}
        for name, make in [("µ-law 8 bit", lambda: mu_law_round_trip(audio, cfg["mu_classes"])),
                           ("Griffin-Lim", lambda: griffin_lim(mel, front_end, gl_iterations)),
                           ("WORLD", lambda: world_resynthesis(audio, rate))]:
            t0 = time.perf_counter()
            outputs[name] = [make()]
            timing[name] += time.perf_counter() - t0
        for s in synths:
            t0 = time.perf_counter()
            outputs[model_label(s)] = [synthesize(s, audio, speaker, temperature, seed) for seed in seeds]
            timing[model_label(s)] += time.perf_counter() - t0
        bucket = speakers.setdefault(speaker, {"reference": [], **{m: [[] for _ in outputs[m]] for m in methods}})
        bucket["reference"] += [audio, gap]
        for name, outs in outputs.items():
            scores = [score(audio, o, rate, front_end, reference_f0) for o in outs]
            per_clip[name].append({"file": rel, **{m: _mean([s[m] for s in scores]) for m in METRICS}})
            for seed_outs, o in zip(bucket[name], outs):
                seed_outs += [o[: audio.shape[0]], gap]
            if wav_dir is not None and k < 3:
                write_wav(wav_dir / f"{Path(rel).stem}.{_slug(name)}.wav", outs[0], rate)
        if wav_dir is not None and k < 3:
            write_wav(wav_dir / f"{Path(rel).stem}.original.wav", audio, rate)
        if (k + 1) % 50 == 0:
            log(f"{k + 1}/{len(clips)} clips")
    per_speaker: dict[str, list[dict]] = {m: [] for m in methods}
    for speaker, bucket in sorted(speakers.items()):
        reference = np.concatenate(bucket["reference"])
        for name in methods:
            scores = [score(reference, np.concatenate(o), rate, front_end) for o in bucket[name]]
            per_speaker[name].append({"speaker": speaker, **{m: _mean([s[m] for s in scores]) for m in METRICS}})
    audio_seconds = sum(a.shape[0] for _, _, a in clips) / rate
    report = {"schema": "wavenet-edge-quality/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              # the data folder by its name: no path of this machine
              "data": {"folder": portable_path(os.path.abspath(data)), "files_regex": files, "clips": len(clips),
                       "seconds": audio_seconds, "speakers": sorted(speakers)},
              "settings": {"temperature": temperature if temperature is not None
                           else {model_label(s): s.temperature for s in synths}, "seeds": seeds, "griffin_lim_iterations": gl_iterations,
                           "sample_rate": rate},
              "methods": {m: {**summarize(per_clip[m], per_speaker[m]),
                              "rtf": timing[m] / audio_seconds / (len(seeds) if m.startswith("WaveNet") else 1)}
                          for m in methods},
              "models": {model_label(s): {"folder": portable_path(s.manifest.folder, os.getcwd())} for s in synths},
              "per_speaker": per_speaker, "per_clip": per_clip}
    first = model_label(synths[0])
    for s in synths:  # each model paired with WORLD, and every later model with the first (an A/B)
        entry, clips_of = report["models"][model_label(s)], per_clip[model_label(s)]
        entry["vs_world"] = {metric: paired(clips_of, per_clip["WORLD"], metric) for metric in PAIRED}
        if model_label(s) != first:
            entry["vs_first"] = {metric: paired(clips_of, per_clip[first], metric) for metric in PAIRED}
    if nll:
        for s in synths:
            report["models"][model_label(s)].update(evaluate_folder(s, data, regex, files))
    return report


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _slug(name: str) -> str:
    name = name.lower().replace("µ", "mu")
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in name).strip("-")


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """Writes one example WAV atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = AtomicWavWriter(path, rate)
    writer.write(audio)
    writer.close()


def markdown(report: dict) -> str:
    """The report as a markdown table (methods × metrics) with the clip counts."""
    d = report["data"]
    lines = [f"Copy synthesis of {d['clips']} held-out clips ({d['seconds']:.0f} s, {len(d['speakers'])} speakers), "
             f"temperature {_temperatures(report['settings']['temperature'])}, seeds {report['settings']['seeds']}.", "",
             "| method | PESQ-NB | STOI | log-mel dist. (dB) | GPE / VDE | PESQ / STOI per speaker | NLL bits/sample |",
             "|---|---|---|---|---|---|---|"]
    for name, m in report["methods"].items():
        nll = report["models"].get(name, {}).get("nll_bits_per_sample")
        lines.append(f"| {name} | {_fmt(m['pesq'])} | {_fmt(m['stoi'], 3)} | {_fmt(m['lmd_db'], 2)} | "
                     f"{_percent(m.get('gpe'))} / {_percent(m.get('vde'))} | "
                     f"{_fmt(m['pesq_speakers'])} / {_fmt(m['stoi_speakers'], 3)} | {_fmt(nll, 3) if nll else ''} |")
    lines.append("")
    first_model = next(iter(report["models"]), None)
    for name, m in report["models"].items():
        for key, other in (("vs_world", "WORLD"), ("vs_first", first_model)):
            for metric, p in (m.get(key) or {}).items():
                if p:
                    lines.append(f"- Paired with {other}, {name}, {metric.upper()}: wins {p['wins']} of {p['clips']} "
                                 f"clips, mean difference {p['mean_difference']:+.3f} (95 % interval "
                                 f"{p['ci95'][0]:+.3f} to {p['ci95'][1]:+.3f}).")
    first = next(iter(report["methods"].values()))
    lines += ["", f"PESQ scored {first['pesq_scored']} of {first['clips']} clips and STOI {first['stoi_scored']} "
              "(the others are too short: under 0.25 s, or under 30 STOI frames of speech); the per-speaker "
              "column scores each speaker's clips concatenated. GPE: frames voiced in both signals whose f0 is off by "
              "more than 20 %; VDE: frames voiced in one signal only (Harvest f0, 5 ms frames)."]
    return "\n".join(lines) + "\n"


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def _temperatures(setting) -> str:
    if isinstance(setting, dict):
        return "as each manifest recommends (" + ", ".join(f"{k}: {v}" for k, v in setting.items()) + ")"
    return str(setting)


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="Model folders (default: the shipped model).")
    parser.add_argument("--data", required=True, help="Folder of held-out recordings.")
    parser.add_argument("--files", default=None, help="Only files whose name matches this regex.")
    parser.add_argument("--speaker-regex", default=None, help="Default: the one the model was trained with.")
    parser.add_argument("--temperature", type=float, default=None,
                        help="Sampling temperature (default: each model's recommended one).")
    parser.add_argument("--seeds", default="0,1", help="Sampling seeds, averaged.")
    parser.add_argument("--griffin-lim-iterations", type=int, default=100)
    parser.add_argument("--nll", action="store_true", help="Also each model's teacher-forced NLL.")
    parser.add_argument("--limit", type=int, default=None, help="Only N clips, evenly spread (a quick look).")
    parser.add_argument("--wav-dir", type=Path, default=None, help="Write the first clips' outputs here.")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        models = args.models or [default_model_dir()]
        report = run(models, args.data, args.files, args.speaker_regex, args.temperature, seeds, args.nll,
                     args.griffin_lim_iterations, args.limit, args.wav_dir, log=lambda m: print(m, file=sys.stderr))
    except (EdgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(report)
    print(text, end="")
    for path, content in [(args.json, json.dumps(report, indent=1, ensure_ascii=False) + "\n"), (args.markdown, text)]:
        if path is not None:
            write_text_atomic(path, content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
