#!/usr/bin/env bash
# Set up (idempotent, with the test and tfds extras), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test,tfds
exec .venv/bin/python -m pytest -n 2 -q "$@"
