"""Teacher-forced quality of an exported model against reference logits, run where TensorFlow is not loaded.

    python -m edge_runtime.quality MODEL_DIR CASES.npz OUT.json

LiteRT and TensorFlow must not share a process: once TensorFlow is imported, LiteRT's XNNPACK kernels return
garbage (measured: NaN logits). So ``convert`` writes the validation cases (``classes_i``, ``mel_i``,
``speaker_i`` and the float32 TF model's ``reference_i`` logits) to an .npz and scores them here, in a process
of its own -- the same way the model will run on a device.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from edge_runtime.evaluate import log_softmax, nll_nats
from edge_runtime.synth import Synthesizer


def score(folder: str | Path, cases: dict) -> dict:
    """NLL (bits/sample), mean KL(reference || model) and argmax agreement over the cases."""
    synth = Synthesizer.load(folder)
    nats, kl, agree, count, i = 0.0, 0.0, 0, 0, 0
    while f"classes_{i}" in cases:
        classes, ref = cases[f"classes_{i}"], cases[f"reference_{i}"].astype(np.float64)
        mel = cases.get(f"mel_{i}")
        speaker = int(cases[f"speaker_{i}"]) if synth.use_speaker else None
        logits = synth.teacher_forced_logits(classes, mel, speaker)
        logp, ref_logp = log_softmax(logits), log_softmax(ref)
        nats += nll_nats(logp, classes)
        kl += (np.exp(ref_logp) * (ref_logp - logp)).sum()
        agree += int((logits.argmax(-1) == ref.argmax(-1)).sum())
        count += logp.shape[0]
        i += 1
    return {"nll_bits_per_sample": nats / count / np.log(2), "mean_kl_nats": kl / count,
            "argmax_agreement": agree / count, "samples": count}


def main() -> None:
    folder, cases_path, out = sys.argv[1:4]
    with np.load(cases_path, allow_pickle=False) as data:
        cases = {k: data[k] for k in data.files}
    Path(out).write_text(json.dumps(score(folder, cases)))


if __name__ == "__main__":
    main()
