"""Exports a trained run as the package's shipped model, with example clips, a model card and a regression number.

    python tools/ship_model.py runs/s_fsdd --data ../shared/data/fsdd/recordings [--name pi --float16 no]
        [--int8-from runs/s_fsdd_qat] [--temperature 0.5 --formant-postfilter 0.7,0.75 --mel-match 12]

A checkpoint of a longer or still running run ships through ``tools/snapshot_run.py`` (a finished run of that step).

Writes (each folder built under a temporary name and renamed into place):
* ``edge_runtime/models/NAME/``: the ``dynamic`` variant (``default``: what ``Synthesizer.load()`` and ``synth``
  use); ``NAME-float16/`` (the float variant, unless ``--float16 no``) and ``NAME-int8/`` only if full int8
  passes the quality bar (its NLL within 3 % of the float run's TF float32 NLL on the same validation samples):
  the run's own int8 export, or with ``--int8-from`` that of its quantization-aware fine-tuning (its last
  checkpoint; ``train --qat-from RUN``);
* ``edge_runtime/examples/``: one held-out clip per speaker, with ``ATTRIBUTION.md``;
* ``edge_runtime/models/training.json`` (config, command, steps, wall and CPU time, curve) and ``reference.json``: the TF
  float32 NLL of two example clips, which the tests compare with the shipped variant through the edge runtime
  (for another NAME: ``NAME.training.json`` and ``NAME.reference.json``). The model card is written by hand.
Needs the train extra (TensorFlow); the exported graphs are scored in a TF-free subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.export import export, portable_data, replace_folder  # noqa: E402
from convert.postfilters import FORMANT_HELP, MEL_MATCH_HELP, parse_formant, parse_mel_match  # noqa: E402
from edge_runtime.errors import WavenetEdgeError, first_line  # noqa: E402
from edge_runtime.files import portable_path  # noqa: E402
from training.checkpoint import load_model, read_log, read_run_info, read_state, write_json_atomic  # noqa: E402
from training.config import Config  # noqa: E402
from training.data import load_utterances  # noqa: E402
from training.evaluate import NLLScorer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INT8_BAR = 1.03  # full int8 ships only if its NLL is within 3 % of float32
FSDD_ATTRIBUTION = ("Free Spoken Digit Dataset (FSDD), Zohar Jackson, César Souza, Jason Flaks, Yuxin Pan, "
                    "Hereman Nicolas and Adhish Thite, https://github.com/Jakobovski/free-spoken-digit-dataset, "
                    "licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)")


def training_command(config: Config, data: dict) -> str:
    """The `wavenet-edge train` command that reproduces a run's config and data split."""
    base = Config.preset(config.name).to_dict()
    sets = []
    for key, value in config.to_dict().items():
        if key in ("speakers", "name", "steps") or base.get(key) == value:
            continue
        value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        sets.append(f"--set {key}={value}")
    parts = [f"wavenet-edge train --preset {config.name} --data {data.get('data_dir')}"]
    if data.get("speaker_regex"):
        parts.append(f"--speaker-regex '{data['speaker_regex']}'")
    if data.get("val_regex"):
        parts.append(f"--val-regex '{data['val_regex']}'")
    return " ".join(parts + ["--out RUN_DIR --steps N"] + sets)


def training_history(run: Path) -> dict:
    """Validation curve and wall time from the run's log (pauses between resumed sessions left out)."""
    entries = read_log(run)
    curve = [{"step": e["step"], "val_nll_bits": e["val_nll_bits"], "train_loss_bits": e.get("train_loss_bits")}
             for e in entries if "val_nll_bits" in e and "step" in e and "time" in e]
    timed = [e for e in entries if "time" in e and "step" in e]
    # the typical pace from CPU time where logged (a stretch with a pause in it has the same CPU time as one
    # without: with validations every few hundred steps, most stretches of a paused run hold a pause)
    clock = "cpu_seconds" if all(e.get("cpu_seconds") is not None for e in timed) else "time"
    per_step = sorted((b[clock] - a[clock]) / (b["step"] - a["step"]) for a, b in zip(timed, timed[1:])
                      if b["step"] > a["step"])
    typical = per_step[len(per_step) // 2] if per_step else 0.0
    seconds = 0.0
    for a, b in zip(timed, timed[1:]):
        if b["step"] > a["step"]:
            dt = b["time"] - a["time"]
            # a gap far above the typical pace is a pause between sessions: count that stretch at the typical pace
            seconds += dt if dt < 3 * typical * (b["step"] - a["step"]) else typical * (b["step"] - a["step"])
    seconds += typical * (timed[0]["step"] if timed else 0)  # steps before the first log line
    return {"curve": curve, "wall_seconds": seconds, "seconds_per_step": typical}


def previous_card(info: dict, out: Path, prefix: str) -> tuple[dict, dict] | None:
    """A fine-tune (``train --finetune-from``) of the run this voice was shipped from, or of a run recovered from
    its shipped float export: (where it was recovered from, with ``model`` None for the shipped run itself; the
    shipped card it continues), else None. The card must describe the source's checkpoint, so that the shipped
    history stays one voice's."""
    source = info.get("finetune_from")
    if not source:
        return None
    path = out / f"{prefix}training.json"
    card = json.loads(path.read_text()) if path.exists() else {}
    recovered = read_run_info(Path(source["run"])).get("recovered_from")
    if not recovered and card.get("export_report", {}).get("run") == Path(source["run"]).name:
        recovered = {"model": None, "checkpoint": card["checkpoint"]}  # the shipped voice's run, still on disk
    if not recovered or not card:
        raise SystemExit(f"error: {source['run']} is neither the run of the voice shipped in {out} nor one "
                         "recovered from it (tools/recover_run.py): its training history is unknown")
    own_steps = card["finetune"]["steps"] if "finetune" in card else card.get("step")
    if card.get("checkpoint") != recovered["checkpoint"] or own_steps != source["step"]:
        raise SystemExit(f"error: {path} describes {card.get('checkpoint')}, not the recovered "
                         f"{recovered['checkpoint']} that {source['run']} holds")
    return recovered, card


def continued_card(card: dict, previous: tuple[dict, dict] | None, info: dict, data: dict) -> dict:
    """The card of a fine-tune continues its source's: the steps, CPU time and curve of both, the fine-tune's
    own command (its schedule), and the shipped card it started from (less its export report)."""
    if previous is None:
        return card
    recovered, old = previous
    offset = old["step"]  # every step the voice has had, earlier fine-tunes included
    curve = old["curve"] + [{**c, "step": c["step"] + offset} for c in card["curve"]]
    command = (f"wavenet-edge train --finetune-from SOURCE_RUN --out RUN_DIR --steps {card['step']} "
               + " ".join(finetune_sets(card["config"], old["config"])))
    if recovered["model"] is not None:  # else SOURCE_RUN is the run of the card it continues (``continues``)
        command = (f"python tools/recover_run.py edge_runtime/models/{recovered['model']} --out SOURCE_RUN --data "
                   f"{data.get('data_dir')}; " + command)
    return {**card, "step": offset + card["step"], "curve": curve, "training_command": command.strip(),
            "cpu_seconds": (old.get("cpu_seconds") or 0) + (info.get("cpu_seconds") or 0),
            "wall_seconds": (old.get("wall_seconds") or 0) + card["wall_seconds"],
            "finetune": {"steps": card["step"], "from_step": offset, "checkpoint": card["checkpoint"],
                         "cpu_seconds": info.get("cpu_seconds"), "wall_seconds": card["wall_seconds"],
                         "model_changes": model_changes(card["config"], old["config"])},
            "continues": {k: v for k, v in old.items() if k not in ("export_report", "config", "curve")}}


def changed_fields(config: dict, source: dict) -> dict:
    """``{field: [source's value, config's]}`` where they differ; a source older than a field holds its default."""
    source = {**Config().to_dict(), **source}
    return {k: [source.get(k), v] for k, v in config.items() if source.get(k) != v}


def finetune_sets(config: dict, source: dict) -> list[str]:
    """The ``--set`` options of a fine-tune: its fields that differ from its source's (besides ``steps``), written
    as the CLI reads them; always its learning rate, whose default is where the source's schedule ended."""
    changed = changed_fields(config, source)
    return [f"--set {k}={set_value(v)}" for k, v in config.items()
            if k != "steps" and (k in changed or k == "learning_rate")]


def set_value(value) -> str:
    """A config value as ``--set`` takes it: ``true``/``false``, lists comma-separated."""
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def model_changes(config: dict, source: dict) -> dict:
    """What a fine-tune changed beyond the schedule (training/qat.py ``TUNABLE``): a grown model (``lpc_inputs``)
    or new targets (``lpc_gamma``), so the card names it as such."""
    from training.qat import TUNABLE

    return {k: change for k, change in changed_fields(config, source).items() if k not in TUNABLE}


def portable_snapshot(source: dict | None) -> dict | None:
    """``run.json``'s ``snapshot_of`` (tools/snapshot_run.py) without an absolute path of this machine."""
    return None if source is None else {**source, "run": portable_path(source["run"], REPO)}


def check_qat_source(qat_run: Path, run: Path, checkpoint: str) -> None:
    """``qat_run`` must fine-tune ``run``'s shipped checkpoint (else its int8 graph is another model's)."""
    source = read_run_info(qat_run).get("qat_from")
    if not source:
        raise SystemExit(f"error: {qat_run} is not a QAT run (train --qat-from {run})")
    if Path(source["run"]).resolve() != run.resolve() or source["checkpoint"] != checkpoint:
        raise SystemExit(f"error: {qat_run} fine-tunes {source['run']} {source['checkpoint']}, "
                         f"not the shipped {run} {checkpoint}")


def int8_from_qat(qat_run: Path, out: Path, report: dict, runtime: dict) -> dict:
    """Exports the QAT run's last checkpoint as int8 (with the ``runtime`` settings of the float export:
    temperature, formant postfilter, mel matching); its NLL against the float run's TF float32 NLL (the export
    scores the same validation samples for both runs: same data split, same count)."""
    qat = export(qat_run, out, "int8", checkpoint="last", **runtime)
    int8, float_tf = qat["variants"]["int8"], report["tensorflow_float32"]
    if int8["samples"] != float_tf["samples"]:
        raise SystemExit(f"error: {qat_run} was scored on {int8['samples']} samples, the float run on "
                         f"{float_tf['samples']}: not the same validation split")
    return {**int8, "run": qat["run"], "checkpoint": qat["checkpoint"],
            "nll_ratio_to_tf_float32": int8["nll_bits_per_sample"] / float_tf["nll_bits_per_sample"]}


def pick_examples(data_dir: Path, speakers: list[str], val_regex: str) -> list[Path]:
    """One held-out clip per speaker, different digits, in speaker order."""
    import re

    picked = []
    for i, speaker in enumerate(speakers):
        for take in range(5):
            path = data_dir / f"{(i + 3) % 10}_{speaker}_{take}.wav"
            if path.exists() and re.search(val_regex, path.name):
                picked.append(path)
                break
        else:
            raise SystemExit(f"no held-out clip of {speaker} in {data_dir}")
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="The recordings the run was trained on.")
    parser.add_argument("--out", type=Path, default=REPO / "edge_runtime" / "models")
    parser.add_argument("--examples", type=Path, default=REPO / "edge_runtime" / "examples")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--name", default="default", help="Folder name of the shipped voice.")
    parser.add_argument("--float16", choices=("yes", "no"), default="yes", help="Also ship NAME-float16.")
    parser.add_argument("--temperature", type=float, default=None, help="Sampling temperature to recommend.")
    parser.add_argument("--formant-postfilter", default=None, metavar="N,D", help=FORMANT_HELP)
    parser.add_argument("--mel-match", default=None, metavar="DB", help=MEL_MATCH_HELP)
    parser.add_argument("--int8-from", type=Path, default=None,
                        help="A QAT run of RUN's shipped checkpoint: its int8 export is the NAME-int8 candidate.")
    args = parser.parse_args()
    prefix = "" if args.name == "default" else f"{args.name}."

    try:
        runtime = {"temperature": args.temperature, "formant": parse_formant(args.formant_postfilter),
                   "mel_match": parse_mel_match(args.mel_match)}
    except WavenetEdgeError as e:
        raise SystemExit(f"error: {first_line(e)}") from None
    info = read_run_info(args.run)
    data = portable_data(info.get("data", {}), base=REPO)  # shipped files hold no absolute path of this machine
    model, config, ckpt = load_model(args.run, args.checkpoint)
    step = read_state(ckpt)["step"]
    if args.int8_from:
        check_qat_source(args.int8_from, args.run, ckpt.name)
    previous = previous_card(info, args.out, prefix)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        tmp = Path(tmp)
        report = export(args.run, tmp / "all", "all", checkpoint=args.checkpoint, **runtime)
        folders = {variant: tmp / "all" / variant for variant in ("dynamic", "float16", "int8")}
        int8 = report["variants"]["int8"]
        if args.int8_from:
            int8 = report["int8_from"] = int8_from_qat(args.int8_from, tmp / "qat", report, runtime)
            folders["int8"] = tmp / "qat"
        ship = {args.name: "dynamic"}
        if args.float16 == "yes":
            ship[f"{args.name}-float16"] = "float16"
        if int8["nll_ratio_to_tf_float32"] <= INT8_BAR:
            ship[f"{args.name}-int8"] = "int8"
        for name, variant in ship.items():
            replace_folder(folders[variant], args.out / name)
        for stale in {f"{args.name}-int8"} - set(ship):
            shutil.rmtree(args.out / stale, ignore_errors=True)

        examples = pick_examples(args.data, list(config.speakers), data.get("val_regex") or r"_[0-4]\.wav$")
        built = tmp / "examples"
        built.mkdir()
        for path in examples:
            shutil.copyfile(path, built / path.name)  # contents only: not the source's read-only mode
            os.chmod(built / path.name, 0o644)
        (built / "ATTRIBUTION.md").write_text(
            "# Example inputs\n\nHeld-out recordings (never used in training) from the " + FSDD_ATTRIBUTION
            + ". Unmodified.\n\n" + "".join(f"- `{p.name}`\n" for p in examples))
        replace_folder(built, args.examples)

    regex = data.get("speaker_regex")
    reference_clips = [p.name for p in examples[:2]]
    pattern = "^(" + "|".join(name.replace(".", r"\.") for name in reference_clips) + ")$"
    utterances = load_utterances(args.examples, config, regex, pattern)
    nll, samples = NLLScorer(model, config)(utterances)
    history = training_history(args.run)
    write_json_atomic(args.out / f"{prefix}reference.json", {
        "clips": reference_clips, "speaker_regex": regex, "tf_float32_nll_bits_per_sample": nll, "samples": samples,
        "checkpoint": ckpt.name, "step": step})
    card = {"preset": config.name, "config": config.to_dict(), "checkpoint": ckpt.name, "step": step,
            "best_val_nll_bits": info.get("best_val_nll_bits"), "training_command": training_command(config, data),
            "data": {**data, "train_files": info.get("train_files"), "val_files": info.get("val_files"),
                     "attribution": FSDD_ATTRIBUTION},
            "wall_seconds": history["wall_seconds"], "seconds_per_step": history["seconds_per_step"],
            "cpu_seconds": info.get("cpu_seconds"), "snapshot_of": portable_snapshot(info.get("snapshot_of")),
            "curve": history["curve"], "export_report": report, "shipped": ship}
    card = continued_card(card, previous, info, data)
    write_json_atomic(args.out / f"{prefix}training.json", card)
    print(json.dumps({k: card[k] for k in ("preset", "step", "best_val_nll_bits", "cpu_seconds", "shipped")}))
    print(f"reference NLL of {reference_clips}: {nll:.4f} bits/sample (TF float32)")


if __name__ == "__main__":
    main()
