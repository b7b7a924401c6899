#!/usr/bin/env bash
# Set-up from a fresh clone: system packages (Debian/Ubuntu: apt-get, as root or through sudo, only those
# missing), the virtual environment .venv, and the package with the given extras.
#   tools/setup.sh audio                          the edge runtime + playback (the README's first command)
#   tools/setup.sh -e train,audio,dev jackd2      what tools/test.sh uses: editable, with the test sink
# Always: python3-venv (when `python3 -m venv` cannot work) and libportaudio2 (for --play).
set -euo pipefail
cd "$(dirname "$0")/.."

editable=()
if [ "${1:-}" = "-e" ]; then editable=(-e); shift; fi
extras="${1:?usage: tools/setup.sh [-e] EXTRAS [APT_PACKAGE...]}"
shift

missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# (grep without -q: -q exits at the first match, and under pipefail the writer's SIGPIPE would fail the test)
ldconfig -p 2>/dev/null | grep 'libportaudio\.so\.2' >/dev/null || missing+=(libportaudio2)
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "+ apt-get install ${missing[*]}" >&2
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: not Debian/Ubuntu: install ${missing[*]} (or their equivalents) yourself" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
echo "+ pip install ${editable[*]} '.[$extras]'" >&2
.venv/bin/pip install -q --disable-pip-version-check "${editable[@]}" ".[$extras]"
