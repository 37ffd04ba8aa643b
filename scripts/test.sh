#!/usr/bin/env bash
# Set up (idempotent, with the test and tfds extras), check the style (ruff), then run the whole
# test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test,tfds
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
# --dist loadscope: each test module runs on one worker, so its module fixtures (a quick study,
# a trained model) are made once, not once per worker.
exec .venv/bin/python -m pytest -n 2 --dist loadscope -q "$@"
