#!/usr/bin/env bash
# The README's second Quickstart command and what .ci/run runs: all the set-up, then every test.
#   1. tools/setup.sh: the system packages the tests need (Debian/Ubuntu, apt-get when missing): python3-venv,
#      libportaudio2 (playback into ALSA's null device) and jackd2 (JACK's dummy driver: a sink with a real
#      clock); the virtual environment .venv with the package, editable, and its train, audio and dev extras;
#   2. the edge suite and the training suite as two pytest processes (LiteRT gives wrong results once
#      TensorFlow is loaded in the same process).
# Runs both suites, then exits non-zero if either failed. Extra arguments go to both pytest runs (e.g. -x, -k NAME).
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup.sh -e train,audio,dev jackd2
failed=()
echo "+ pytest tests/edge" >&2
.venv/bin/python -m pytest -q tests/edge "$@" || failed+=(edge)
echo "+ pytest tests/training" >&2
.venv/bin/python -m pytest -q tests/training "$@" || failed+=(training)
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: the ${failed[*]} suite(s)" >&2
  exit 1
fi
