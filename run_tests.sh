#!/usr/bin/env bash
# The test command (README's second command, and all of CI through .ci/run): the same set-up as
# ./run_all.sh, then every test including the slow ones, every stage end to end on the tiny recipe, and
# the model-size gate over every recipe and trained model.
set -euo pipefail
cd "$(dirname "$0")"
./run_all.sh --only setup
.venv/bin/python -m pytest -m "slow or not slow" "$@"
./run_all.sh --recipe tiny
.venv/bin/python tools/check_model_size.py  # the size gate: every recipe and every trained runs/*/model.pth
