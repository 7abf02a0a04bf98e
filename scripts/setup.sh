#!/usr/bin/env bash
# Creates ./.venv and installs cxr_jax. `bash scripts/setup.sh test` also
# installs the test/benchmark references (pytest, scikit-learn, torch, timm).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
req=requirements.txt
[ "${1:-}" = "test" ] && req=requirements-test.txt
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
