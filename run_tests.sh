#!/usr/bin/env bash
# The test command (README's second command, and all of CI through .ci/run): the same set-up as
# ./run_all.sh, then every test including the slow ones, every stage end to end on the tiny recipe, and
# the model-size gate over every recipe and trained model.
set -euo pipefail
cd "$(dirname "$0")"
./run_all.sh --only setup
.venv/bin/python -m pytest -m "slow or not slow" "$@"
./run_all.sh --recipe tiny
# Again: every stage finds its outputs complete and computes nothing but the size check, which always runs
# (a stage whose stamp hashed files it writes itself would run every time).
rerun="$(./run_all.sh --recipe tiny)"
printf '%s\n' "$rerun"
for finished in "environment up to date" "demo data up to date" "patch store up to date" "runs/tiny/model.pth up to date" \
                "bilateral: predictions up to date" "bm3d: predictions up to date" \
                "predictions up to date in runs/tiny/result/data" "runs/tiny/result.zip up to date" \
                "noisy: score up to date" "bilateral: score up to date" "bm3d: score up to date" "tiny: score up to date"; do
  grep -qF "$finished" <<<"$rerun" || { echo "run_tests.sh: a second ./run_all.sh --recipe tiny did not say '$finished'" >&2; exit 1; }
done
.venv/bin/python tools/check_model_size.py  # the size gate: every recipe and every trained runs/*/model.pth
