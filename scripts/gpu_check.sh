#!/usr/bin/env bash
# The GPU check: every GPU fact in one bounded call (scripts/gpu_check.py; docs/gpu.md).
#
#   bash scripts/gpu_check.sh --dry-run [--out DIR]            # here, on the CPU, tiny
#   bash scripts/gpu_check.sh --out "$OUT" --work /tmp/gpu_check   # on the lent GPU machine
#
# On the GPU machine (no network; its own Python 3.12 with torch, Lightning, transformers) it
# first installs the wheels `make gpu-wheels` put in .whl/ into /tmp/site and the project
# itself with --no-deps; the dry run uses the Python it is given (PYTHON, default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
dry=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry=1; done

if [[ $dry == 0 ]]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "error: .whl/: the carried wheels do not install" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if ! "$PYTHON" -c "import w2v2_pretrain.configs" 2>/dev/null; then
    # an editable install (the console scripts too); where the machine's setuptools cannot
    # build this pyproject.toml, the source tree itself, configs/ linked in as the package
    # w2v2_pretrain.configs (which is what pyproject.toml's package-dir maps)
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e .; then
      echo "gpu_check: pip install -e . failed; running from the source tree" >&2
      ln -sfn ../configs w2v2_pretrain/configs
      export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PYTHON" -c "import w2v2_pretrain.configs" \
      || { echo "error: w2v2_pretrain does not import on this machine (see above)" >&2; exit 2; }
  fi
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
