#!/usr/bin/env bash
# Install vdit-accel with its test dependencies into .venv and run the test suite (CPU only, offline).
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k core    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
pip install -q --disable-pip-version-check torch==2.13.0      # the CPU build; an unpinned torch pulls CUDA wheels
pip install -q --disable-pip-version-check -e ".[dev]"
bash .ci/install_browser.sh                                     # Debian's Chromium for the demo's browser test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One intra-op thread: tests compare results bit for bit across processes (search workers, kill-and-resume), which
# holds only with the same thread count everywhere, and the 2-rank parallel tests then fit the 2 cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -q -p no:cacheprovider "$@"
