#!/usr/bin/env bash
# One-shot accelerator check: the GPU-relevant tests, the benchmarks and the 3-seed study, each
# timed, on a machine whose Python already has JAX (with its GPU backend), Flax, Optax, Orbax,
# matplotlib and pytest; no network, nothing installed. Writes OUT_DIR/summary.json and the logs.
#   scripts/accelerator_check.sh OUT_DIR [--quick] [--budget-s SECONDS] [--data-dir DIR]
# Python: $PYTHON, else python3 on PATH. Data: --data-dir DIR, else $FMNIST_DATA_DIR, else the
# usual places (see README). --quick is a smoke run of the check itself on a CPU. --budget-s:
# the seconds all parts may take together (default 570, within a 10-minute limit per command).
# Exit status: 0 every part passed, 1 a part failed (summary.json says which), 2 bad arguments.
# See scripts/accelerator_check.py for what each part runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$root/scripts/accelerator_check.py" "$@"
