"""``wavenet-edge``: a thin click layer over the Python API.

Commands that need TensorFlow import it lazily, so the edge commands work with numpy + LiteRT alone.
Expected bad input (a missing folder, a corrupt file, an unknown config key...) ends with a one-line
``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys

import click

from wavenet_edge.common import clean_errors, require_tensorflow


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="wavenet-edge")
def main() -> None:
    """WaveNet for the edge: train in TensorFlow, export single-step TFLite graphs, stream audio."""


@main.command()
@click.option("--preset", default="s",
              help="Config preset: tiny, xs, s or paper (with --qat-from/--finetune-from: the source's).")
@click.option("--data", "data_dir", default=None, type=click.Path(),
              help="Folder of WAV/FLAC files (recursive). Required, except with --qat-from (default: the source's).")
@click.option("--out", "run_dir", required=True, type=click.Path(), help="Run folder (resumed if it exists).")
@click.option("--qat-from", "qat_from", default=None, type=click.Path(),
              help="Quantization-aware fine-tuning of this finished float run (its config, data and final weights).")
@click.option("--finetune-from", "finetune_from", default=None, type=click.Path(),
              help="Float fine-tuning of this finished float run: its weights, a fresh optimizer, a new schedule.")
@click.option("--steps", type=int, default=None, help="Training steps (default: the preset's); 0 writes an initial checkpoint.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--speaker-regex", default=None, help="Regex with a named group 'speaker' on file names (default: parent folder).")
@click.option("--val-regex", default=None, help="Files whose name matches go to validation (default: a hashed fraction).")
@click.option("--val-fraction", default=0.05, type=float, help="Validation fraction when no --val-regex.")
@click.option("--cpu-replicas", default=0, type=int, help="Split the CPU into N logical devices (MirroredStrategy test).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@clean_errors
def train(preset, data_dir, run_dir, qat_from, finetune_from, steps, overrides, speaker_regex, val_regex, val_fraction,
          cpu_replicas, quiet):
    """Train (or resume) a WaveNet on a folder of recordings."""
    source_dir = qat_from if qat_from is not None else finetune_from
    if data_dir is None and source_dir is None:
        raise click.UsageError("Missing option '--data'.")
    require_tensorflow()
    from training.config import Config, ConfigError
    from training.train import DataArgs, choose_strategy, train as run_training

    if qat_from is not None and finetune_from is not None:
        raise ConfigError("--qat-from and --finetune-from exclude each other: fine-tune one way at a time")

    data = None if data_dir is None else DataArgs(data_dir, speaker_regex, val_regex, val_fraction)
    source = None
    if source_dir is not None:
        from training.qat import prepare

        named = click.get_current_context().get_parameter_source("preset") == click.core.ParameterSource.COMMANDLINE
        config, data, source = prepare(source_dir, run_dir, list(overrides), steps, preset if named else None, data,
                                       qat=qat_from is not None)
    else:
        config = Config.preset(preset).with_overrides(list(overrides))
        if steps is not None:
            config = config.replace(steps=steps)
    summary = run_training(config, data, run_dir, strategy=choose_strategy(cpu_replicas), progress=not quiet,
                           log=lambda m: click.echo(m, err=True), source=source)
    click.echo(json.dumps(summary))
    if summary["interrupted"]:
        sys.exit(130)


@main.command(name="eval")
@click.argument("folder", type=click.Path())
@click.option("--data", "data_dir", required=True, type=click.Path(), help="Folder of recordings to score.")
@click.option("--files", "files_regex", default=None, help="Score only files whose name matches this regex.")
@click.option("--checkpoint", default="best", help="Run folders: best, last, or a checkpoint folder.")
@click.option("--speaker-regex", default=None, help="Default: the one the run was trained with.")
@click.option("--device", default="cpu", help="Model folders: cpu or edgetpu[:usb|:pci][:N].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--engine", default="auto", type=click.Choice(["auto", "native", "litert"]),
              help="Model folders: the compiled step loop where it applies (auto), or always LiteRT's graph.")
@clean_errors
def evaluate(folder, data_dir, files_regex, checkpoint, speaker_regex, device, as_json, engine):
    """Teacher-forced NLL (bits/sample) over every file of a folder, for a run (TF) or an exported model (TFLite)."""
    from pathlib import Path

    if (Path(folder) / "manifest.json").exists():
        from edge_runtime.evaluate import evaluate_folder
        from edge_runtime.synth import Synthesizer

        synth = Synthesizer.load(folder, device=device, engine=engine)
        regex = speaker_regex or synth.manifest.data.get("data", {}).get("speaker_regex")
        result = {**evaluate_folder(synth, data_dir, regex, files_regex), "model": str(folder), "engine": synth.engine}
    else:
        require_tensorflow()
        from training.checkpoint import load_model, read_run_info
        from training.data import load_utterances, unigram_entropy_bits
        from training.evaluate import NLLScorer

        model, config, ckpt = load_model(folder, checkpoint)
        regex = speaker_regex or read_run_info(folder).get("data", {}).get("speaker_regex")
        utterances = load_utterances(data_dir, config, regex, files_regex)
        nll, count = NLLScorer(model, config)(utterances)
        result = {"nll_bits_per_sample": nll, "samples": count, "files": len(utterances),
                  "unigram_entropy_bits": unigram_entropy_bits(utterances, config.mu_classes), "checkpoint": str(ckpt)}
    if as_json:
        click.echo(json.dumps(result))
    else:
        extra = (f" (µ-law unigram entropy {result['unigram_entropy_bits']:.4f})"
                 if "unigram_entropy_bits" in result else "")
        click.echo(f"NLL {result['nll_bits_per_sample']:.4f} bits/sample over {result['samples']} samples in "
                   f"{result['files']} files{extra}")


@main.command(name="export")
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Model folder to create.")
@click.option("--quantize", default="dynamic", type=click.Choice(["float32", "float16", "dynamic", "int8", "all"]),
              help="Quantization variant ('all': one sub-folder each).")
@click.option("--batch", default=1, type=int, help="Independent streams per step.")
@click.option("--checkpoint", default="best", help="best, last, or a checkpoint folder.")
@click.option("--calibration-data", default=None, type=click.Path(), help="Validation recordings (default: the run's split).")
@click.option("--chunk-frames", default=None, type=int,
              help="Mel frames per conditioner call (default 4; each call also computes the context frames around it).")
@click.option("--eval-samples", default=200_000, type=int, help="Samples scored per variant for the report.")
@click.option("--temperature", default=None, type=float,
              help="Sampling temperature the manifest recommends (the runtime's default for this model).")
@click.option("--formant-postfilter", default=None, metavar="N,D",
              help="The formant postfilter A(z/N)/A(z/D) of an LPC model (0 <= N <= D < 1, e.g. 0.7,0.75).")
@click.option("--mel-match", default=None, metavar="DB",
              help="The mel-matching postfilter's largest gain in dB (0 < DB <= 60, e.g. 12): the audio's mel bands "
                   "pulled to the conditioning log-mel.")
@click.option("--force", is_flag=True, help="Replace an existing model folder.")
@clean_errors
def export_command(run_dir, out_dir, quantize, batch, checkpoint, calibration_data, chunk_frames, eval_samples,
                   temperature, formant_postfilter, mel_match, force):
    """Export a run's checkpoint to TFLite step/conditioner graphs with a manifest and a quality report."""
    require_tensorflow()
    from convert.export import DEFAULT_CHUNK_FRAMES, OutputExists, export, format_report
    from convert.postfilters import parse_formant, parse_mel_match

    chunk_frames = DEFAULT_CHUNK_FRAMES if chunk_frames is None else chunk_frames
    try:
        report = export(run_dir, out_dir, quantize, batch=batch, checkpoint=checkpoint,
                        calibration_data=calibration_data, force=force, chunk_frames=chunk_frames,
                        eval_samples=eval_samples, temperature=temperature, formant=parse_formant(formant_postfilter),
                        mel_match=parse_mel_match(mel_match), log=lambda m: click.echo(m, err=True))
    except OutputExists as e:  # the library's message cannot name the flag
        raise OutputExists(str(e) + OutputExists.HINT) from None
    click.echo(format_report(report))
    click.echo(f"wrote {out_dir}")


from wavenet_edge.bench_cli import bench  # noqa: E402  (edge commands: numpy + LiteRT only)
from wavenet_edge.synth_cli import info, synth  # noqa: E402

main.add_command(synth)
main.add_command(info)
main.add_command(bench)


if __name__ == "__main__":
    main()
