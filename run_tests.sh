#!/usr/bin/env bash
# The test command (README's second command, and all of CI through .ci/run): the same set-up as
# ./run_all.sh, then every test including the slow ones, then every stage end to end on the tiny recipe.
set -euo pipefail
cd "$(dirname "$0")"
./run_all.sh --only setup
.venv/bin/python -m pytest -m "slow or not slow" "$@"
./run_all.sh --recipe tiny
