"""``wavenet-edge``: a thin click layer over the Python API.

Commands that need TensorFlow import it lazily, so the edge commands work with numpy + LiteRT alone.
Expected bad input (a missing folder, a corrupt file, an unknown config key...) ends with a one-line
``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

EXIT_BAD_INPUT = 2


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, from the modules already imported (never importing TensorFlow)."""
    errors: list[type[BaseException]] = [OSError]
    for module, name in [("training.config", "ConfigError"), ("training.data", "DataError"),
                         ("training.checkpoint", "CheckpointError")]:
        mod = sys.modules.get(module)
        if mod is not None:
            errors.append(getattr(mod, name))
    return tuple(errors)


def clean_errors(fn):
    """Turns expected errors into ``error: message`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.exceptions.ClickException:
            raise
        except _expected_errors() as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


def require_tensorflow() -> None:
    """Imports TensorFlow, or exits 2 naming the extra to install.

    TensorFlow's C++ libraries print start-up banners to file descriptor 2 while they load, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says; they are dropped so that errors stay one line. Later messages pass.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        missing = True
    else:
        missing = False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    if missing:
        click.echo("error: this command needs TensorFlow: pip install 'wavenet-edge[train]'", err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="wavenet-edge")
def main() -> None:
    """WaveNet for the edge: train in TensorFlow, export single-step TFLite graphs, stream audio."""


@main.command()
@click.option("--preset", default="s", help="Config preset: tiny, xs, s or paper.")
@click.option("--data", "data_dir", required=True, type=click.Path(), help="Folder of WAV/FLAC files (recursive).")
@click.option("--out", "run_dir", required=True, type=click.Path(), help="Run folder (resumed if it exists).")
@click.option("--steps", type=int, default=None, help="Training steps (default: the preset's); 0 writes an initial checkpoint.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--speaker-regex", default=None, help="Regex with a named group 'speaker' on file names (default: parent folder).")
@click.option("--val-regex", default=None, help="Files whose name matches go to validation (default: a hashed fraction).")
@click.option("--val-fraction", default=0.05, type=float, help="Validation fraction when no --val-regex.")
@click.option("--cpu-replicas", default=0, type=int, help="Split the CPU into N logical devices (MirroredStrategy test).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@clean_errors
def train(preset, data_dir, run_dir, steps, overrides, speaker_regex, val_regex, val_fraction, cpu_replicas, quiet):
    """Train (or resume) a WaveNet on a folder of recordings."""
    require_tensorflow()
    from training.config import Config
    from training.train import DataArgs, choose_strategy, train as run_training

    config = Config.preset(preset).with_overrides(list(overrides))
    if steps is not None:
        config = config.replace(steps=steps)
    data = DataArgs(data_dir, speaker_regex, val_regex, val_fraction)
    summary = run_training(config, data, run_dir, strategy=choose_strategy(cpu_replicas), progress=not quiet,
                           log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(summary))
    if summary["interrupted"]:
        sys.exit(130)


@main.command(name="eval")
@click.argument("run_dir", type=click.Path())
@click.option("--data", "data_dir", required=True, type=click.Path(), help="Folder of WAV/FLAC files to score.")
@click.option("--checkpoint", default="best", help="best, last, or a checkpoint folder.")
@click.option("--speaker-regex", default=None, help="Default: the one the run was trained with.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def evaluate(run_dir, data_dir, checkpoint, speaker_regex, as_json):
    """Teacher-forced NLL (bits/sample) of a trained run over every file of a folder."""
    require_tensorflow()
    from training.checkpoint import load_model, read_run_info
    from training.data import load_utterances, unigram_entropy_bits
    from training.evaluate import NLLScorer

    model, config, ckpt = load_model(run_dir, checkpoint)
    regex = speaker_regex or read_run_info(run_dir).get("data", {}).get("speaker_regex")
    utterances = load_utterances(data_dir, config, regex)
    nll, count = NLLScorer(model, config)(utterances)
    result = {"nll_bits_per_sample": nll, "samples": count, "files": len(utterances),
              "unigram_entropy_bits": unigram_entropy_bits(utterances, config.mu_classes), "checkpoint": str(ckpt)}
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"NLL {nll:.4f} bits/sample over {count} samples in {len(utterances)} files "
                   f"(µ-law unigram entropy {result['unigram_entropy_bits']:.4f}); checkpoint {ckpt}")


if __name__ == "__main__":
    main()
