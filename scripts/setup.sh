#!/usr/bin/env bash
# Sets up .venv inside the checkout: torch first (CPU wheel unless RLDT_TORCH=cuda),
# then torchrl-rldt in editable mode with its examples, demos, distributed and test extras, then
# metaworld's scripted experts (everything). Running it again when
# nothing changed installs nothing.
#
#   RLDT_TORCH=cpu|cuda   torch build to install (default: cpu)
#   PYTHON=python3.11     interpreter that creates the virtual environment
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_VERSION="2.13.0"
VARIANT="${RLDT_TORCH:-cpu}"
VENV=".venv"
STAMP="$VENV/.rldt-setup"

case "$VARIANT" in
  cpu|cuda) ;;
  *) echo "RLDT_TORCH must be 'cpu' or 'cuda', got '$VARIANT'" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"

wanted="$(cat setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1) $VARIANT"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] \
   && "$PY" -c "import torch, torchrl_rldt" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  if [ "$VARIANT" = "cuda" ]; then
    "$PY" -m pip install "torch==$TORCH_VERSION"
  elif compgen -G "${PIP_FIND_LINKS:-/nonexistent}/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
    # a local CPU wheel (pip's find-links) wins over the index's CUDA build
    "$PY" -m pip install "torch==$TORCH_VERSION"
  else
    "$PY" -m pip install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$PY" -m pip install -e ".[examples,demos,distributed,test]"
# Meta-World's scripted experts, without the metaworld package's pins: it requires
# mujoco==3.3.0 for its own environments, which we do not use (EnvPool runs Meta-World);
# its policies need only numpy and scipy.
"$PY" -m pip install --no-deps "metaworld==3.1.1"
echo "$wanted" > "$STAMP"
echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
