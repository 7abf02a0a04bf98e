#!/usr/bin/env bash
# Creates ./.venv and installs cxr_jax. `bash scripts/setup.sh test` also
# installs the test/benchmark references (pytest, scikit-learn, torch, timm)
# and, when no Chromium is on PATH and it runs as root with apt-get (as CI
# does), Debian's chromium for the HTML pages' browser test
# (tests/test_html_browser.py, which skips, saying so, without one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
req=requirements.txt
[ "${1:-}" = "test" ] && req=requirements-test.txt
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/dev/null || echo "setup.sh: apt-get could not install chromium;" \
      "tests/test_html_browser.py will skip." >&2
  else
    echo "setup.sh: no Chromium on PATH and not root with apt-get, so none" \
      "is installed; tests/test_html_browser.py will skip." >&2
  fi
fi
