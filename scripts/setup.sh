#!/usr/bin/env bash
# Create (or reuse) ./.venv with Python 3.11 and install the project with its test extras.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"need Python 3.11, found {sys.version}"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision are pinned in pyproject.toml; pip takes them from this machine's local disk.
.venv/bin/python -m pip install -q -e ".[test]"
# Debian's Chromium: tests/test_identify_review.py opens the match-review page in it (headless).
if ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi
