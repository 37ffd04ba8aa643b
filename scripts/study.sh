#!/usr/bin/env bash
# Set up (idempotent), then run the whole study and write results/REPORT.md.
# Extra arguments go to the study, e.g. scripts/study.sh --seeds 5 --out results5
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m experiments.study "$@"
