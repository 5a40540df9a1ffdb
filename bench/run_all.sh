#!/usr/bin/env bash
# Every benchmark of issue 6, at device sizes, each appending its table to bench/RESULTS.md: the one
# command to run on the lent GPU machine ("How to run on the device" in bench/RESULTS.md).
#
#   bash bench/run_all.sh [--tiny] [TARGET...]
#
# TARGETs, run in this order by default: step fid concurrent data orchestration asha. Named only:
# curves, issue 27's GPU learning-curve table (bench/curves/shapes-gpu.csv): it resumes where the last
# call stopped (finished runs are in the table; a run cut short starts again on a fresh machine), so
# `bash bench/run_all.sh curves` in as many calls as it takes, the table copied back over bench/curves/
# after each.
# --tiny: the CPU check sizes (seconds to minutes each on 2 cores), printed only (--no-record).
#
# It must fit one device call (600 s), so every target runs under `timeout` with what is left of
# BUDGET_S (default 570) and the ones that did not finish are named at the end: run them in a second
# call, e.g. `bash bench/run_all.sh asha`. After each target, RESULTS.md, the ASHA/FIFO plot and this
# run's log are copied to $OUT when it is set (the device tool brings back what lies there).
#
# Found without being set, when staged by bench/stage_device.sh (bench/staged.env says where): the
# installed wheels on PYTHONPATH (ray, optuna, mlflow, pytorch-fid), ORCHESTRATOR_FID_WEIGHTS (the staged
# default_1.pt), and DATA_ROOT=$STAGE/data (mnist/*.gz and food-101/, as in ../shared/data, the default
# elsewhere).
# NOTE, if set, is recorded under every table.
set -uo pipefail
cd "$(dirname "$0")/.."

source bench/staged.env  # where bench/stage_device.sh puts what it stages
[[ -d $STAGED_SITE ]] && export PYTHONPATH="$STAGED_SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -z ${ORCHESTRATOR_FID_WEIGHTS:-} && -f $STAGED_WEIGHTS ]]; then
  export ORCHESTRATOR_FID_WEIGHTS=$STAGED_WEIGHTS
fi
data=${DATA_ROOT:-}
[[ -z $data && -d $STAGE/data ]] && data=$STAGE/data
data=${data:-../shared/data}
out=${OUT:-}
deadline=$((SECONDS + ${BUDGET_S:-570}))

tiny=0
if [[ ${1:-} == --tiny ]]; then tiny=1; shift; fi
targets=("$@")
((${#targets[@]})) || targets=(step fid concurrent data orchestration asha)

# each target: the script, its device arguments, and its --tiny arguments
declare -A script=(
  [step]=step_throughput.py [fid]=fid_eval.py [concurrent]=concurrent_trials.py
  [data]=data_prep.py [orchestration]=orchestration.py [asha]=asha_vs_fifo.py [curves]=learning_curves.py
)
declare -A device_args=(
  [step]="" [fid]="" [concurrent]="" [data]="--data-root $data --repeat 8" [orchestration]=""
  [asha]="--data-root $data"
  [curves]="shapes --configs 48 --seeded 4 --seeds 4 --table bench/curves/shapes-gpu.csv"
)
declare -A tiny_args=(
  [step]="--device cpu --steps 2 --warmup 1 --repeats 1 --batches 4 --curve-steps 6 --curve-batch 4 --smooth 3"
  [fid]="--device cpu --n 32 --batch 16 --pfid-batch 16 --train-steps 0"
  [concurrent]="--device cpu --ks 1,2 --batch 2 --big-batch 4 --steps 2 --warmup 1"
  [data]="--data-root $data"
  [orchestration]="--device cpu --num-samples 4 --max-concurrent 2 --eval-every 2 --max-evals 2 --fid-n 16 --limit 200"
  [asha]="--device cpu --data-root $data --num-samples 4 --max-concurrent 2 --eval-every 2 --max-evals 3
          --reduction-factor 2 --fid-n 16 --limit 300 --plot /tmp/asha_vs_fifo.png"
  [curves]="shapes --smoke-test --configs 1 --table /tmp/curves-tiny.csv"
)

mkdir -p /tmp/bench-logs
log=/tmp/bench-logs/run_all-$(date +%Y%m%d-%H%M%S).log
save() {
  [[ -n $out ]] || return 0
  cp bench/RESULTS.md "$log" "$out"/
  [[ -f bench/asha_vs_fifo.png ]] && cp bench/asha_vs_fifo.png "$out"/
  [[ -f bench/curves/shapes-gpu.csv ]] && cp bench/curves/shapes-gpu.csv "$out"/
  return 0
}

declare -A status=()
for name in "${targets[@]}"; do
  if [[ -z ${script[$name]:-} ]]; then
    echo "unknown target $name; targets: ${!script[*]}" >&2
    exit 2
  fi
  left=$((deadline - SECONDS))
  if ((left < 30)); then
    status[$name]="not run: out of time"
    continue
  fi
  if ((tiny)); then
    args=(${tiny_args[$name]} --no-record)
  else
    args=(${device_args[$name]})
    [[ -n ${NOTE:-} ]] && args+=(--note "$NOTE")
  fi
  echo "=== $name, at most ${left}s: python bench/${script[$name]} ${args[*]}" | tee -a "$log"
  start=$SECONDS
  timeout -k 10 "$left" python "bench/${script[$name]}" "${args[@]}" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status[$name]="ok, $((SECONDS - start)) s" ;;
    124 | 137) status[$name]="stopped at the time limit after $((SECONDS - start)) s" ;;
    *) status[$name]="failed (exit status $rc) after $((SECONDS - start)) s" ;;
  esac
  save
done

echo "=== summary" | tee -a "$log"
failed=0
for name in "${targets[@]}"; do
  echo "  $name: ${status[$name]}" | tee -a "$log"
  [[ ${status[$name]} == ok* ]] || failed=1
done
save
exit $failed
