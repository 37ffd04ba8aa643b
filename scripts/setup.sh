#!/usr/bin/env bash
# Idempotent set-up: the Fashion-MNIST files and the project's virtual environment (.venv).
#   scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test,tfds   (default: no extras)
# More extras from FMNIST_JAX_EXTRAS (e.g. FMNIST_JAX_EXTRAS=cuda12); cuda12 (JAX's CUDA build)
# is added by itself where an NVIDIA GPU answers nvidia-smi.
# Versions: those requirements.lock pins (the reference results' environment, Python 3.11 on
# Linux x86-64), and for packages it does not list (JAX's CUDA build) the newest that fit them;
# FMNIST_JAX_UNLOCKED=1 installs the newest versions pyproject.toml allows instead.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${FMNIST_JAX_UNLOCKED:-0}" in
    0) versions=locked pins=(-c requirements.lock) ;;
    1) versions=unlocked pins=(--upgrade --upgrade-strategy eager) ;;
    *) echo "error: FMNIST_JAX_UNLOCKED=$FMNIST_JAX_UNLOCKED; use 1 (newest versions" \
            "pyproject.toml allows) or 0 (requirements.lock's, the default)" >&2
       exit 2 ;;
esac
extras="${1:-},${FMNIST_JAX_EXTRAS:-}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extras="$extras,cuda12"
fi
extras="$(tr ',' '\n' <<<"$extras" | sed '/^$/d' | sort -u | paste -sd, -)"
debian_dir=/usr/share/datasets/fashion-mnist

# 1. Data: Debian/Ubuntu ship it as a package; elsewhere say what the alternatives are.
if [ -z "${FMNIST_DATA_DIR:-}" ] && [ ! -e "$debian_dir/train-images-idx3-ubyte.gz" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "setup: installing the Fashion-MNIST data (apt-get install dataset-fashion-mnist)"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        cat >&2 <<MSG
setup: Fashion-MNIST was not found in $debian_dir and this system has no apt-get.
       Any one of these works:
         --data-dir DIR (or FMNIST_DATA_DIR=DIR) with the four IDX files, gzipped or not;
         --source download   (fetches the official files into ~/.cache/fmnist_jax, verified);
         pip install -e '.[tfds]' and --source tfds   (uses a TensorFlow Datasets cache).
MSG
    fi
fi

# 2. Python >= 3.11 and the virtual environment, reinstalled only when pyproject.toml,
#    requirements.lock or the choice of versions changes.
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $python is $("$python" --version 2>&1); fmnist-jax needs Python >= 3.11 (set PYTHON=...)" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
hash="$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
stamp=".venv/.installed-$hash-$versions-${extras//,/_}"
if [ ! -f "$stamp" ]; then
    echo "setup: installing fmnist-jax${extras:+[$extras]} into .venv ($versions versions)"
    .venv/bin/python -m pip install -q --upgrade pip
    if ! .venv/bin/python -m pip install -q "${pins[@]}" -e ".${extras:+[$extras]}"; then
        [ "$versions" = unlocked ] || echo "error: pip could not install requirements.lock's" \
            "versions (made for Python 3.11 on Linux x86-64); elsewhere FMNIST_JAX_UNLOCKED=1" \
            "$0${1:+ $1} installs the newest versions pyproject.toml allows" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
