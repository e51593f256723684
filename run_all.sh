#!/usr/bin/env bash
# The whole contest in one command: set-up, then every stage in order, each skipped when its outputs
# are complete for the same command and inputs (a .done stamp written last).
#
#   ./run_all.sh [--data DIR] [--contest NAME] [--recipe NAME] [--from STAGE | --only STAGE] [--full-size]
#
# Stages: setup (a local .venv with requirements.txt), data (the demo set in work/demo/, or work/demo-full/
# with --full-size, only when no --data is given), patches (work/patches/<data folder name>/p<size>/), train
# (runs/<recipe>/ on the default demo set, runs/<recipe>-<data folder name>/ on any other data, resumed
# from its last checkpoint when a previous run of the same recipe was interrupted), size (the trained
# model against the contest's size limit; over it stops the run), predict (tiled inference on the test
# inputs into the run's result/data/, and the classical entries into runs/bilateral[-<data>]/ and, on the
# default demo set, runs/bm3d/), pack (the run's result.zip, validated), score (every entry on the local
# leaderboard runs/leaderboard.sqlite: the model's zip, bilateral, BM3D, and the inputs as "do nothing").
set -Eeuo pipefail
cd "$(dirname "$0")"

STAGES=(setup data patches train size predict pack score)
PYTHON_BIN="${PYTHON:-python3.11}"
VENV=.venv
DATA=""
CONTEST=""  # the profile's default (tools/pipeline.py default-contest) unless --contest says
RECIPE=demo
FROM=""
ONLY=""
FULL_SIZE=""

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run_all.sh: $*" >&2; exit 2; }
is_stage() { local s; for s in "${STAGES[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA="${2:?--data needs a folder}"; shift 2 ;;
    --contest) CONTEST="${2:?--contest needs a name or path}"; shift 2 ;;
    --recipe) RECIPE="${2:?--recipe needs a name}"; shift 2 ;;
    --from) FROM="${2:?--from needs a stage}"; shift 2 ;;
    --only) ONLY="${2:?--only needs a stage}"; shift 2 ;;
    --full-size) FULL_SIZE=1; shift ;;
    -h|--help) usage; echo "stages: ${STAGES[*]}"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -z "$FROM" || -z "$ONLY" ]] || die "--from and --only contradict each other; give one"
for s in "$FROM" "$ONLY"; do
  [[ -z "$s" ]] || is_stage "$s" || die "unknown stage '$s'; stages: ${STAGES[*]}"
done
if [[ -n "$DATA" && ! -d "$DATA" ]]; then die "--data $DATA: folder not found"; fi
[[ -f "configs/train/$RECIPE.toml" ]] || die "--recipe $RECIPE: no configs/train/$RECIPE.toml (recipes: $(cd configs/train && ls *.toml | sed 's/.toml//' | tr '\n' ' '))"

# Which stages run: all, those from --from on, or just --only. setup always runs first (it is cheap
# when nothing changed) because every other stage needs the environment.
selected() {
  local stage="$1"
  if [[ -n "$ONLY" ]]; then [[ "$stage" == "$ONLY" || "$stage" == setup ]]; return; fi
  if [[ -n "$FROM" ]]; then
    local s seen=""
    for s in "${STAGES[@]}"; do [[ "$s" == "$FROM" ]] && seen=1; [[ "$s" == "$stage" ]] && break; done
    [[ -n "$seen" || "$stage" == setup ]]; return
  fi
  return 0
}

hash_files() { sha256sum "$@" 2>/dev/null | sha256sum | cut -c1-16; }
# What run_all asks of the project is answered by tools/pipeline.py: the profile's folders, a recipe's
# patch size, and code-hash, a hash of every repository file a stage's scripts import (transitively),
# the contest profile and any --also file, so that a change to anything a stage runs reruns it.
pipeline() { "$VENV/bin/python" tools/pipeline.py "$@"; }
code_hash() { pipeline code-hash "$@" --contest "$CONTEST"; }

# A stamp records the command and a hash of everything the stage read; equal stamp = skip.
stamp_matches() { [[ -f "$1" ]] && [[ "$(cat "$1")" == "$2" ]]; }
write_stamp() { printf '%s' "$2" > "$1.tmp" && mv "$1.tmp" "$1"; }

stage_setup() {
  command -v "$PYTHON_BIN" >/dev/null || die "$PYTHON_BIN not found: install Python 3.11 (torch 2.13.0's wheel is for 3.11)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv "$VENV"
  fi
  local stamp
  # The editable install (-e . in requirements.txt) points at this folder, where every script imports
  # rawdenoise from: a moved or copied clone installs again rather than run another folder's code.
  stamp="requirements $(hash_files requirements.txt pyproject.toml) python $("$VENV/bin/python" -V 2>&1) in $(pwd -P)"
  if stamp_matches "$VENV/.setup.done" "$stamp"; then
    echo "environment up to date ($VENV)"
    return
  fi
  echo "installing requirements.txt into $VENV (first run, or requirements changed)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r requirements.txt \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  write_stamp "$VENV/.setup.done" "$stamp"
}

stage_data() {
  if [[ -n "$DATA" ]]; then
    echo "using contest data in $DATA (no demo set needed)"
    return
  fi
  local out
  out="$(data_dir)"
  local args=(--out "$out" --contest "$CONTEST")
  [[ -n "$FULL_SIZE" ]] && args+=(--full-size)
  local stamp
  stamp="make_demo_data ${args[*]} $(code_hash tools/make_demo_data.py)"
  if stamp_matches "$out/.done" "$stamp"; then
    echo "demo data up to date in $out"
    return
  fi
  [[ -t 2 ]] || args+=(--quiet)  # a progress bar only where someone watches; not part of the stamp
  "$VENV/bin/python" tools/make_demo_data.py "${args[@]}"
  write_stamp "$out/.done" "$stamp"
}

# Each data set has its own folders, so a run on other data (--full-size, --data) never replaces another's
# data, model or entries: work/demo and runs/<recipe> for the default demo set, a suffix for any other.
data_dir() { if [[ -n "$DATA" ]]; then echo "$DATA"; elif [[ -n "$FULL_SIZE" ]]; then echo work/demo-full; else echo work/demo; fi; }
runs_suffix() { [[ "$(realpath -m "$(data_dir)")" == "$(realpath -m work/demo)" ]] || echo "-$(basename "$(realpath -m "$(data_dir)")")"; }
run_dir() { echo "runs/$RECIPE$(runs_suffix)"; }
patch_size() { pipeline patch-size "configs/train/$RECIPE.toml"; }
# One store per data folder and patch size, so recipes with different crops never rebuild each other's.
patch_store() {  # each query on its own line: a failing one inside echo's arguments would go unnoticed
  local size data
  size="$(patch_size)" || return
  data="$(cd "$(data_dir)" && pwd)" || return
  echo "work/patches/$(basename "$data")/p$size"
}

# A listing of names, sizes and times: cheap to hash, and it changes whenever a file does.
hash_tree() { find "$@" -type f -printf '%P %s %T@\n' 2>/dev/null | sort | sha256sum | cut -c1-16; }

score_entry() {  # NAME FOLDER PRED_DIR GT_DIR: score one entry onto the leaderboard, its report in FOLDER
  local name="$1" out="$2" pred="$3" gt="$4"
  local stamp
  local inputs
  inputs="$(dirname "$gt")"  # the test inputs and noise.csv beside the ground truth: the per-level table reads them
  stamp="score $name $pred $gt $CONTEST $(hash_tree "$pred" "$gt") $(hash_tree "$inputs" -maxdepth 2) $(code_hash tools/score.py)"
  if stamp_matches "$out/.score.done" "$stamp" && [[ -f runs/leaderboard.sqlite ]]; then
    echo "$name: score up to date ($out/scores.csv)"
    return
  fi
  mkdir -p "$out"
  "$VENV/bin/python" tools/score.py "$pred" "$gt" --contest "$CONTEST" --name "$name" \
    --csv "$out/scores.csv" --html "$out/report.html"
  write_stamp "$out/.score.done" "$stamp"
}

stage_patches() {
  local data store stamp args
  data="$(data_dir)"
  store="$(patch_store)"
  local size
  size="$(patch_size)"
  args=(--data "$data" --out "$store" --contest "$CONTEST" --patch-size "$size" --step "$size")
  stamp="make_patches ${args[*]} $(hash_tree "$data") $(code_hash train/make_patches.py)"
  if stamp_matches "$store/.done" "$stamp"; then
    echo "patch store up to date in $store"
    return
  fi
  [[ -t 2 ]] || args+=(--quiet)
  "$VENV/bin/python" train/make_patches.py "${args[@]}"
  write_stamp "$store/.done" "$stamp"
}

stage_train() {
  local run store stamp mode=--overwrite
  run="$(run_dir)"
  store="$(patch_store)"
  stamp="train $RECIPE $CONTEST $(hash_files "$store/meta.json") $(code_hash train/train.py --also "configs/train/$RECIPE.toml")"
  if stamp_matches "$run/.train.done" "$stamp" && [[ -f "$run/model.pth" ]]; then
    echo "$run/model.pth up to date"
    return
  fi
  if [[ -f "$run/last.pt" ]] && stamp_matches "$run/.train.started" "$stamp"; then
    mode=--resume  # the same training was interrupted: continue from its last checkpoint
    echo "resuming $run from its last checkpoint"
  fi
  mkdir -p "$run"
  write_stamp "$run/.train.started" "$stamp"
  local args=(--config "configs/train/$RECIPE.toml" --patches "$store" --run "$run" --contest "$CONTEST" "$mode")
  [[ -t 2 ]] || args+=(--quiet)
  "$VENV/bin/python" train/train.py "${args[@]}"
  write_stamp "$run/.train.done" "$stamp"
}

stage_size() {
  "$VENV/bin/python" tools/check_model_size.py "$(run_dir)/model.pth" --contest "$CONTEST"
}

layout_folders() { pipeline layout "$CONTEST"; }  # the test inputs' and ground truth's folder names

# The set scored locally: the data's own test set when it has ground truth (the demo does), else the
# validation frames make_patches kept aside as a local test set (real contest data has no test GT).
scoring_root() {
  local data gt_folder
  data="$(data_dir)"
  read -r _ gt_folder <<<"$(layout_folders)"
  if [[ -d "$data/$gt_folder" ]]; then echo "$data"; elif [[ -d "$(patch_store)/localtest" ]]; then echo "$(patch_store)/localtest"; fi
}

# A classical entry (NAME SCRIPT INPUTS) predicts the scoring set into runs/NAME[-data]/result/data,
# with a stamp of its own: it depends on the test inputs and its code, never on the recipe.
classical_entry() {
  local name="$1" script="$2" inputs="$3" folder stamp quiet=()
  folder="runs/$name$(runs_suffix)"
  stamp="$name $CONTEST $(hash_tree "$inputs") $(code_hash "$script")"
  if stamp_matches "$folder/.predict.done" "$stamp" && [[ -d "$folder/result/data" ]]; then
    echo "$name: predictions up to date in $folder/result/data"
    return
  fi
  [[ -t 2 ]] || quiet=(--quiet)
  "$VENV/bin/python" "$script" --input "$inputs" --output "$folder/result/data" --contest "$CONTEST" "${quiet[@]}"
  write_stamp "$folder/.predict.done" "$stamp"
}

# BM3D costs about 10 s a demo frame on one core: run_all runs it on the default demo set (about
# 1.5 minutes on 2 cores) and names the command for anything larger.
runs_bm3d() { [[ -z "$(runs_suffix)" ]]; }

stage_predict() {
  local run noisy_folder gt_folder scoring stamp quiet=()
  run="$(run_dir)"
  read -r noisy_folder gt_folder <<<"$(layout_folders)"
  scoring="$(scoring_root)"
  if [[ -n "$scoring" ]]; then
    classical_entry bilateral tools/bilateral.py "$scoring/$noisy_folder"
    if runs_bm3d; then
      classical_entry bm3d tools/bm3d_denoise.py "$scoring/$noisy_folder"
    else
      echo "bm3d: not run on data this large (minutes a frame); to rank it: python tools/bm3d_denoise.py" \
        "--input $scoring/$noisy_folder --output runs/bm3d$(runs_suffix)/result/data --contest $CONTEST"
    fi
  fi
  stamp="predict $RECIPE $CONTEST $(hash_tree "$(data_dir)/$noisy_folder" ${scoring:+"$scoring"}) $(hash_files "$run/model.pth" "$run/config.toml") $(pipeline bf16-cost "$run") $(code_hash submission/predict.py)"
  if stamp_matches "$run/.predict.done" "$stamp" && [[ -d "$run/result/data" ]]; then
    echo "predictions up to date in $run/result/data"
    return
  fi
  [[ -t 2 ]] || quiet=(--quiet)
  rm -rf "$run/result" "$run/localtest"
  "$VENV/bin/python" submission/predict.py --run "$run" --input "$(data_dir)/$noisy_folder" --contest "$CONTEST" "${quiet[@]}"
  if [[ -n "$scoring" && "$scoring" != "$(data_dir)" ]]; then
    "$VENV/bin/python" submission/predict.py --run "$run" --input "$scoring/$noisy_folder" \
      --output "$run/localtest/data" --contest "$CONTEST" "${quiet[@]}"
  fi
  write_stamp "$run/.predict.done" "$stamp"
}

stage_pack() {
  local noisy_folder run stamp
  run="$(run_dir)"
  read -r noisy_folder _ <<<"$(layout_folders)"
  stamp="pack $RECIPE $CONTEST $(hash_tree "$run/result/data" "$(data_dir)/$noisy_folder") $(hash_files "$run/model.pth" "$run/config.toml") $(code_hash submission/pack.py)"
  if stamp_matches "$run/.pack.done" "$stamp" && [[ -f "$run/result.zip" ]]; then
    echo "$run/result.zip up to date"
    return
  fi
  "$VENV/bin/python" submission/pack.py --run "$run" --input "$(data_dir)/$noisy_folder" --contest "$CONTEST"
  write_stamp "$run/.pack.done" "$stamp"
}

stage_score() {
  local scoring noisy_folder gt_folder
  scoring="$(scoring_root)"
  read -r noisy_folder gt_folder <<<"$(layout_folders)"
  if [[ -z "$scoring" ]]; then
    echo "no test ground truth and no local test set: nothing to score locally"
    return
  fi
  [[ "$scoring" == "$(data_dir)" ]] || echo "scoring on the local test set in $scoring (validation frames kept aside)"
  local suffix run
  suffix="$(runs_suffix)"
  run="$(run_dir)"
  score_entry noisy "runs/noisy$suffix" "$scoring/$noisy_folder" "$scoring/$gt_folder"
  score_entry bilateral "runs/bilateral$suffix" "runs/bilateral$suffix/result/data" "$scoring/$gt_folder"
  if [[ -d "runs/bm3d$suffix/result/data" ]]; then
    score_entry bm3d "runs/bm3d$suffix" "runs/bm3d$suffix/result/data" "$scoring/$gt_folder"
  fi
  if [[ "$scoring" == "$(data_dir)" ]]; then
    score_entry "$RECIPE" "$run" "$run/result.zip" "$scoring/$gt_folder"  # the zip, not the folder: its scores.csv and stamp are written here
  else
    score_entry "$RECIPE" "$run" "$run/localtest/data" "$scoring/$gt_folder"
  fi
  versus_bm3d "$run/scores.csv" "runs/bm3d$suffix/scores.csv"
}

versus_bm3d() {  # MODEL_CSV BM3D_CSV: the model's mean row against the strongest classical entry's
  [[ -f "$1" && -f "$2" ]] || return 0
  awk -F, -v name="$RECIPE" 'FNR == 1 { f++ } $1 == "mean" { psnr[f] = $2; score[f] = $4 }
    END { d = score[1] - score[2]
          printf "%s against BM3D: %+.2f points, %+.3f dB mean PSNR (%s)\n", name, d, psnr[1] - psnr[2],
                 (d >= 0 ? "ahead of it" : "trailing it") }' "$1" "$2"
}

current=""
on_error() {  # once, at the top level, however deep the failing command was
  local code=$1
  if [[ $BASH_SUBSHELL -eq 0 ]]; then
    echo "run_all.sh: stage ${current:-?} failed (exit $code); fix the problem above and rerun: finished stages are skipped" >&2
  fi
  exit "$code"
}
trap 'on_error $?' ERR

declare -a TIMES=()
for stage in "${STAGES[@]}"; do
  current="$stage"
  selected "$stage" || continue
  echo "==> $stage"
  if [[ "$stage" != setup && -z "$CONTEST" ]]; then CONTEST="$(pipeline default-contest)"; fi
  if [[ "$stage" != setup && -z "${CONTEST_CHECKED:-}" ]]; then  # a bad --contest: one clear line, no traceback
    pipeline check-contest "$CONTEST" || exit 2  # its one line names the problem
    CONTEST_CHECKED=1
  fi
  start=$(date +%s.%N)
  "stage_$stage"
  took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  TIMES+=("$stage $took")
  echo "    $stage done in ${took}s"
done

echo
echo "stage        seconds"
for row in "${TIMES[@]}"; do printf '%-12s %7s\n' ${row}; done
