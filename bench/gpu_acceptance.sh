#!/usr/bin/env bash
# Issue 12's GPU acceptance run: proves the GPU path in ONE device call (at most 600 s), then names
# what passed, what failed and what had no time ("The GPU acceptance run" in bench/RESULTS.md).
#
#   bash bench/gpu_acceptance.sh [--tiny]        # --print-budget: the time arithmetic, nothing run
#
# Parts, in this order, each under `timeout` with what is left of BUDGET_S (default 540):
#   pytest   python -m pytest -m gpu -q on the test files that have GPU-marked tests (skipped, and
#            said so, where pytest is not importable: stage it with device-stage --wheels pytest)
#   search   bench/gpu_acceptance.py: a real search on shapes, 8 trials at --gpus-per-trial 0.25;
#            one trial's worker SIGKILLed after its first checkpoint (Tune restores it: the CUDA
#            checkpoint-restore path of issue 12), later the driver SIGKILLed and the search run
#            again with --resume; checks FID falls, trials overlap on cuda, the restored trial
#            continued from its checkpoint, finished trials were not run again
#   step     bench/step_throughput.py at reduced sizes (appends its table to bench/RESULTS.md)
#   fid      bench/fid_eval.py at reduced sizes (the same)
#   quality  bench/search_quality.py at reduced sizes, when 150 s are left (the same)
# --tiny: the same logic on the CPU at tiny sizes, nothing recorded; ~10 min on 2 cores, so its default
# budget is 1200 s (it is no device call).
# RESULTS.md, this run's log, the search logs and its checks are copied to $OUT when it is set
# (at most 8 files: what the device tool brings back), after every part.
#
# Found without being set, when staged by ../shared/tools/device-stage (as bench/run_all.sh does):
# /tmp/site on PYTHONPATH (ray, optuna, mlflow, pytorch-fid, pytest wheels) and
# ORCHESTRATOR_FID_WEIGHTS=/tmp/stage/fidw/default_1.pt. NOTE, if set, is recorded under every table.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE_LIMIT_S=600  # one device call at most
KILL_GRACE_S=10     # timeout -k: a part that ignores SIGTERM is killed this much later
RESERVE_S=20        # start-up, the summary and the copies to $OUT, outside every part
budget=${BUDGET_S:-540}
PYTEST_MAX_S=150    # the GPU tests are seconds; a hang must not eat the search's time
SEARCH_MARGIN_S=15  # the search stops itself this much before its timeout, to report what it saw
MIN_PART_S=30       # a part with less than this left is not started

if [[ ${1:-} == --print-budget ]]; then
  echo "budget_s=$budget kill_grace_s=$KILL_GRACE_S reserve_s=$RESERVE_S device_limit_s=$DEVICE_LIMIT_S" \
       "total_s=$((budget + KILL_GRACE_S + RESERVE_S))"
  exit 0
fi
tiny=0
if [[ ${1:-} == --tiny ]]; then
  tiny=1
  shift
  budget=${BUDGET_S:-1200}  # a CPU check, not a device call: 2 cores take ~10 minutes
fi
if (($#)); then
  echo "usage: bash bench/gpu_acceptance.sh [--tiny | --print-budget]" >&2
  exit 2
fi
if ((budget + KILL_GRACE_S + RESERVE_S > DEVICE_LIMIT_S)); then
  echo "note: BUDGET_S=$budget + ${KILL_GRACE_S}s kill grace + ${RESERVE_S}s reserve exceeds one device call" \
       "(${DEVICE_LIMIT_S}s)" >&2
fi

[[ -d /tmp/site ]] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -z ${ORCHESTRATOR_FID_WEIGHTS:-} && -f /tmp/stage/fidw/default_1.pt ]]; then
  export ORCHESTRATOR_FID_WEIGHTS=/tmp/stage/fidw/default_1.pt
fi
out=${OUT:-}
deadline=$((SECONDS + budget))
began=$SECONDS

mkdir -p /tmp/bench-logs
stamp=$(date +%Y%m%d-%H%M%S)
log=/tmp/bench-logs/gpu_acceptance-$stamp.log
work=$(mktemp -d "/tmp/gpu-acceptance-$stamp.XXXX")
export ORCHESTRATOR_CACHE=$work/cache  # a fresh cache, as a first search on the machine has
echo "gpu_acceptance: $( ((tiny)) && echo "--tiny, CPU sizes, nothing recorded" || echo "device sizes")," \
     "budget ${budget}s, work folder $work, log $log" | tee -a "$log"
python - <<'PY' 2>&1 | tee -a "$log"
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
PY
if ((!tiny)) && ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_acceptance: torch sees no CUDA device; this is the device run (on a CPU: --tiny)" | tee -a "$log" >&2
  exit 2
fi

save() {
  [[ -n $out ]] || return 0
  cp bench/RESULTS.md "$log" "$out"/ 2>/dev/null
  for f in search-1.log search-2.log acceptance.json search_quality.png; do
    [[ -f $work/$f ]] && cp "$work/$f" "$out"/
  done
  [[ -f $work/runs/gpu-accept/results.csv ]] && cp "$work/runs/gpu-accept/results.csv" "$out"/
  return 0
}

order=(pytest search step fid quality)
declare -A status=()

# run_part NAME CAP_S COMMAND...: runs COMMAND under timeout with min(CAP_S, what is left)
run_part() {
  local name=$1 cap=$2 left start rc
  shift 2
  left=$((deadline - SECONDS))
  if ((left < MIN_PART_S)); then
    status[$name]="no time (${left}s left)"
    echo "=== $name: not run, ${left}s left" | tee -a "$log"
    return 0
  fi
  ((cap > left)) && cap=$left
  echo "=== $name, at most ${cap}s: $*" | tee -a "$log"
  start=$SECONDS
  timeout -k "$KILL_GRACE_S" "$cap" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status[$name]="passed, $((SECONDS - start)) s" ;;
    124 | 137) status[$name]="failed: stopped at the time limit after $((SECONDS - start)) s" ;;
    *) status[$name]="failed (exit status $rc) after $((SECONDS - start)) s" ;;
  esac
  part_rc=$rc
  save
}

# --- pytest: the GPU-marked tests
part_rc=0
if ! python -c "import pytest" 2>/dev/null; then
  status[pytest]="skipped: pytest is not importable here; stage it: ../shared/tools/device-stage --wheels pytest"
  echo "=== pytest: ${status[pytest]}" | tee -a "$log"
else
  mapfile -t gpu_files < <(grep -l "pytest.mark.gpu" tests/test_*.py | grep -v "tests/test_gpu_acceptance.py")
  ((${#gpu_files[@]})) || gpu_files=(tests)
  run_part pytest "$PYTEST_MAX_S" python -m pytest -m gpu -q -p no:cacheprovider "${gpu_files[@]}"
  summary=$(grep -E "^[0-9]+ (passed|failed|skipped|deselected|error)|^=+ .*(passed|failed|skipped|error).* =+$|no tests ran" \
            "$log" | tail -1 | tr -d '=' | xargs)
  if [[ -n ${status[pytest]:-} && ${status[pytest]} == passed* ]]; then
    if ((!tiny)) && [[ $summary != *passed* ]]; then
      status[pytest]="failed: no GPU test ran ($summary)"
    else
      status[pytest]="${status[pytest]}: ${summary:-no summary}"
    fi
  elif ((part_rc == 5)); then
    status[pytest]="failed: no GPU-marked test was collected"
  fi
fi

# --- search: worker kill, driver kill, --resume, the checks
search_args=(--workdir "$work")
((tiny)) && search_args+=(--tiny)
[[ -n ${NOTE:-} ]] && search_args+=(--note "$NOTE")
left=$((deadline - SECONDS))
run_part search "$left" python bench/gpu_acceptance.py "${search_args[@]}" --budget $((left - SEARCH_MARGIN_S))
python bench/gpu_acceptance.py --workdir "$work" --cleanup 2>&1 | tee -a "$log"  # if it was killed
if [[ -f $work/acceptance.json ]]; then
  checks=$(python -c "import json, sys; c = json.load(open(sys.argv[1]))['checks']; \
print(sum(x['ok'] is True for x in c), 'passed,', sum(x['ok'] is False for x in c), 'failed,', \
sum(x['ok'] is None for x in c), 'informational')" "$work/acceptance.json")
  [[ -n ${status[search]:-} ]] && status[search]="${status[search]}; checks: $checks"
fi

# --- throughput tables, at sizes that fit what is left
note_args=()
if ((tiny)); then
  step_args=(--device cpu --steps 2 --warmup 1 --repeats 1 --batches 4 --curve-steps 6 --curve-batch 4 --smooth 3
             --no-record)
  fid_args=(--device cpu --n 32 --batch 16 --pfid-batch 16 --train-steps 0 --no-record)
else
  note_args=(--note "gpu_acceptance.sh (issue 12), reduced sizes${NOTE:+; $NOTE}")
  if ((deadline - SECONDS >= 150)); then
    step_args=(--steps 100 --warmup 10 --repeats 3 --batches 64,512 --curve-steps 300 --smooth 30)
    fid_args=(--n 2000 --train-steps 100)
  else
    step_args=(--steps 50 --warmup 5 --repeats 2 --batches 64,512 --curve-steps 0)
    fid_args=(--n 1000 --train-steps 50 --no-cross-check)
  fi
fi
run_part step "$((deadline - SECONDS))" python bench/step_throughput.py "${step_args[@]}" "${note_args[@]}"
run_part fid "$((deadline - SECONDS))" python bench/fid_eval.py "${fid_args[@]}" "${note_args[@]}"

# --- search quality (issue 14): TPE + ASHA vs random + ASHA vs TPE + FIFO, sized to what is left;
# last, as the one part whose absence fails nothing (its CPU run is recorded in bench/RESULTS.md)
left=$((deadline - SECONDS))
if ((tiny)); then
  status[quality]="skipped: --tiny (bench/search_quality.py's own CPU run is in bench/RESULTS.md)"
elif ((left < 150)); then
  status[quality]="skipped: ${left}s left, three searches need 150"
else
  run_part quality "$left" python bench/search_quality.py --num-samples 8 --max-evals 4 --eval-every 100 \
    --fid-n 500 --limit 5000 --plot "$work/search_quality.png" "${note_args[@]}"
fi

echo "=== summary ($((SECONDS - began)) s of ${budget}s; work folder $work)" | tee -a "$log"
failed=0
for name in "${order[@]}"; do
  echo "  $name: ${status[$name]:-not run}" | tee -a "$log"
  case ${status[$name]:-} in
    passed* | skipped*) ;;
    *) failed=1 ;;
  esac
done
if [[ -f $work/acceptance.json ]]; then
  python -c "import json, sys; [print(f\"    {'INFO' if c['ok'] is None else 'PASS' if c['ok'] else 'FAIL'} \
{c['name']}\") for c in json.load(open(sys.argv[1]))['checks']]" "$work/acceptance.json" | tee -a "$log"
fi
echo "gpu_acceptance: $( ((failed)) && echo FAILED || echo PASSED )" | tee -a "$log"
save
exit $failed
