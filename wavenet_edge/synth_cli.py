"""The edge commands (`synth`, `info`): numpy + LiteRT only, never TensorFlow."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from tokenize import TokenError

import click
import numpy as np

from wavenet_edge.common import clean_errors


def _terminated(signum, frame):
    """SIGTERM unwinds like Ctrl-C (partial outputs removed) and exits 143, the shell's code for it."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds():
    """While output is written, `kill` (not only Ctrl-C) unwinds, so the partial output is dropped. Outside it
    SIGTERM keeps its default action: raised while objects are finalised, SystemExit would be printed and ignored.
    Signal handlers live on the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _load_mel(path: str) -> np.ndarray:
    from edge_runtime.errors import InputError, first_line

    try:
        mel = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError, TokenError) as e:  # numpy parses the header as Python literals
        raise InputError(f"cannot read mel file {path}: {first_line(e)}") from None
    if mel.ndim != 2 or not np.issubdtype(mel.dtype, np.floating):
        raise InputError(f"{path}: mel must be a float array [frames, bands], got {mel.dtype} {mel.shape}")
    return mel


def _example_wav(synth, speaker) -> str:
    """A shipped example recording of the requested speaker (any example for models without speakers)."""
    from edge_runtime.corpus import speaker_of
    from edge_runtime.errors import InputError
    from edge_runtime.synth import example_clips

    clips = example_clips()
    if not clips:
        raise InputError("no example recordings are installed: give --wav, --mel or --seconds")
    if synth.use_speaker:
        name = synth.manifest.speakers[synth.speaker_index(speaker)]
        regex = synth.manifest.data.get("data", {}).get("speaker_regex")
        clips = [p for p in clips if regex and speaker_of(p, p.parent, regex) == name] or clips
    click.echo(f"input: example recording {clips[0].name} (give --wav to resynthesise your own)", err=True)
    return str(clips[0])


def _source(synth, wav, mel, seconds, speaker):
    """(mel frames or None, seconds or None, total samples, output gain) from the command's one source option."""
    from edge_runtime.errors import InputError
    from edge_runtime.wavio import read_wav, resample

    given = [x is not None for x in (wav, mel, seconds)]
    if sum(given) > 1:
        raise InputError("give only one of --wav, --mel or --seconds")
    if not any(given):
        if not synth.use_mel:
            raise InputError("this model has no local conditioning: use --seconds N")
        wav = _example_wav(synth, speaker)
    if seconds is not None:
        if not 0 < seconds < float("inf"):
            raise InputError(f"--seconds must be a finite positive number, got {seconds}")
        return None, seconds, int(round(seconds * synth.sample_rate)), 1.0
    if not synth.use_mel:
        raise InputError("this model has no local conditioning: use --seconds N")
    if wav is not None:
        audio, rate = read_wav(wav)
        audio = resample(audio, rate, synth.sample_rate)
        frames, gain = synth.features(audio)  # at the model's level; the voice comes back at the recording's
        if frames.shape[0] == 0:
            raise InputError(f"{wav} is shorter than one frame")
    else:
        frames, gain = _load_mel(mel), 1.0
    return frames, None, frames.shape[0] * synth.config["hop_length"], gain


@click.command()
@click.argument("model_dir", required=False, type=click.Path())
@click.option("--wav", type=click.Path(),
              help="Resynthesise this recording from its log-mel (default: a shipped example of the speaker).")
@click.option("--mel", type=click.Path(),
              help="Conditioning frames as .npy [frames, width]: log-mel bands (then pitch features, for a "
                   "pitch_features model) of audio at the model's level (its normalize_peak).")
@click.option("--seconds", type=float, help="Free generation (models without local conditioning).")
@click.option("--speaker", default=None, help="Speaker name or index (multi-speaker models; default the first).")
@click.option("--temperature", default=None, type=float,
              help="Sampling temperature (0: most likely sample; default: the model's recommended one, else 0.5).")
@click.option("--seed", default=None, type=int, help="Seed for reproducible audio.")
@click.option("--out", type=click.Path(), help="Write a 16-bit WAV (atomically).")
@click.option("--play", is_flag=True, help="Play through the default sound device while synthesising.")
@click.option("--raw", is_flag=True, help="Write 16-bit PCM to stdout, flushed per chunk (| aplay -f S16_LE -r RATE).")
@click.option("--audio-device", default=None, help="Playback device (name or index, see `python -m sounddevice`).")
@click.option("--device", default="cpu", help="cpu or edgetpu[:usb|:pci][:N].")
@click.option("--threads", default=1, type=int, help="Interpreter threads.")
@click.option("--engine", default="auto", type=click.Choice(["auto", "native", "litert"]),
              help="Step loop: the compiled one where it applies (auto), or always LiteRT's graph.")
@clean_errors
def synth(model_dir, wav, mel, seconds, speaker, temperature, seed, out, play, raw, audio_device, device, threads, engine):
    """Synthesise speech with an exported model (default: the model shipped with the package)."""
    from edge_runtime.errors import InputError
    from edge_runtime.synth import Synthesizer
    from edge_runtime.wavio import AtomicWavWriter, to_pcm16

    if sum([out is not None, play, raw]) != 1:
        raise InputError("give exactly one of --out FILE, --play or --raw")
    t_load = time.perf_counter()
    synthesizer = Synthesizer.load(model_dir, device=device, threads=threads, engine=engine)
    frames, secs, total, gain = _source(synthesizer, wav, mel, seconds, speaker)
    rate = synthesizer.sample_rate
    chunks = synthesizer.stream(frames, speaker=speaker, temperature=temperature, seed=seed, seconds=secs, gain=gain)
    t0, done = time.perf_counter(), 0
    t_end = None  # when synthesis finished (playback may go on after it)
    show = sys.stderr.isatty()

    def progress(chunk_iter):
        nonlocal done, t_end
        for chunk in chunk_iter:
            done += chunk.shape[0]
            if show:
                elapsed = time.perf_counter() - t0
                sys.stderr.write(f"\r{done / rate:6.2f}/{total / rate:.2f} s of audio, RTF "
                                 f"{elapsed / max(done / rate, 1e-9):.3f}\033[K")
            yield chunk
        t_end = time.perf_counter()

    with _sigterm_unwinds():  # only while a partial output exists
        extra = ""
        if out is not None:
            writer = AtomicWavWriter(out, rate)
            try:
                for chunk in progress(chunks):
                    writer.write(chunk)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            extra = f"wrote {out}"
        elif raw:
            stdout = sys.stdout.buffer
            try:
                for chunk in progress(chunks):
                    stdout.write(to_pcm16(chunk))
                    stdout.flush()
            except BrokenPipeError:  # the reader (head, aplay) went away: not an error
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                sys.exit(0)
            except OSError as e:  # e.g. ENOSPC when stdout is a file on a full disk
                raise InputError(f"cannot write to standard output: {e.strerror or e}") from None
        else:
            from edge_runtime.playback import Player

            audio_device = int(audio_device) if audio_device is not None and audio_device.isdigit() else audio_device
            stats = Player(rate, device=audio_device).play(progress(chunks), total, rate)
            extra = (f"played {stats['played_samples'] / rate:.2f} s, "
                     f"pre-buffer {stats['prebuffer_samples'] / rate:.2f} s, {stats['underruns']} underruns")
    elapsed = (t_end or time.perf_counter()) - t0
    if show:
        sys.stderr.write("\n")
    click.echo(f"{done / rate:.2f} s of audio in {elapsed:.2f} s: real-time factor {elapsed / max(done / rate, 1e-9):.3f} "
               f"(load {t0 - t_load:.2f} s) {extra}".rstrip(), err=True)


def postfilter_chain(manifest) -> list[str]:
    """What the runtime does to the decoded samples, in order, as the manifest says (``info``)."""
    cfg, chain = manifest.config, []
    if manifest.lpc_order:
        chain.append(f"LPC synthesis (order {manifest.lpc_order}, gamma {cfg.get('lpc_gamma')})")
    if manifest.formant is not None:
        chain.append("formant postfilter ({}/{})".format(*manifest.formant))
    if manifest.deemphasis:
        chain.append(f"de-emphasis {manifest.deemphasis}")
    if manifest.mel_match is not None:
        chain.append(f"mel matching (at most {manifest.mel_match:g} dB)")
    return chain


@click.command()
@click.argument("model_dir", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@clean_errors
def info(model_dir, as_json):
    """Summary of an exported model: config, variant, state layout, tensors, op counts."""
    from edge_runtime.interpreter import graph_details
    from edge_runtime.synth import default_model_dir
    from edge_runtime.manifest import load_manifest

    manifest = load_manifest(model_dir or default_model_dir())
    data, cfg = manifest.data, manifest.config
    graphs = {}
    for name, path in [("step", manifest.step_path), ("conditioner", manifest.conditioner_path)]:
        if path is not None:
            ops, _ = graph_details(path)
            graphs[name] = {"file": path.name, "bytes": path.stat().st_size, "ops": ops,
                            "inputs": data[name]["inputs"], "outputs": data[name]["outputs"]}
    summary = {"folder": str(manifest.folder), "variant": data["variant"], "batch": data["batch"],
               "sample_rate": data["sample_rate"], "speakers": manifest.speakers, "preset": cfg["name"],
               "layers": f"{cfg['stacks']} x {cfg['layers_per_stack']}", "receptive_field": data["receptive_field"],
               "state_rows": len(data["state"]["rows"]), "producer": data["producer"], "graphs": graphs,
               "postfilter": postfilter_chain(manifest), "temperature": manifest.temperature}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"{summary['folder']}: {summary['variant']} {cfg['name']} WaveNet, {summary['layers']} layers, "
               f"receptive field {summary['receptive_field']}, {summary['sample_rate']} Hz, batch {summary['batch']}")
    click.echo(f"speakers: {', '.join(summary['speakers']) or '(none)'}; from {data['producer'].get('checkpoint')} "
               f"(step {data['producer'].get('step')}), {data['producer'].get('package')}")
    click.echo(f"output: {' -> '.join(summary['postfilter']) or 'the decoded samples'}; sampling temperature "
               f"{'0.5 (the runtime default)' if manifest.temperature is None else manifest.temperature}")
    for name, g in graphs.items():
        click.echo(f"{name}: {g['file']} {g['bytes']:,} bytes; ops " + ", ".join(f"{k} {v}" for k, v in g["ops"].items()))
        for kind in ("inputs", "outputs"):
            for port, d in g[kind].items():
                q = f" scale {d['scale']:.4g} zero {d['zero_point']}" if d["dtype"] == "int8" else ""
                click.echo(f"  {kind[:-1]:<6} {port:<17} {d['dtype']:<7} {d['shape']}{q}")
