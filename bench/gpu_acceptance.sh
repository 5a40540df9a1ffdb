#!/usr/bin/env bash
# The GPU acceptance run (issues 12 and 25), one device call of at most 360 s: every part of the GPU
# path, each under a budget of its own, one PASS / FAIL / INFO line each (bench/gpu_harness.py says how
# each is judged; "The GPU acceptance run" in bench/RESULTS.md says how to stage and run it).
#
#   bash bench/gpu_acceptance.sh [--tiny | --preflight | --print-budget]
#
# This wrapper only finds what bench/stage_device.sh staged (bench/staged.env says where) and runs
# the harness; BUDGET_S, NOTE and OUT are read there.
set -uo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
  "" | --tiny | --preflight | --print-budget) ;;
  *) echo "usage: bash bench/gpu_acceptance.sh [--tiny | --preflight | --print-budget]" >&2; exit 2 ;;
esac
(($# <= 1)) || { echo "usage: bash bench/gpu_acceptance.sh [--tiny | --preflight | --print-budget]" >&2; exit 2; }
source bench/staged.env
[[ -d $STAGED_SITE ]] && export PYTHONPATH="$STAGED_SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -z ${ORCHESTRATOR_FID_WEIGHTS:-} && -f $STAGED_WEIGHTS ]]; then
  export ORCHESTRATOR_FID_WEIGHTS=$STAGED_WEIGHTS
fi
exec python3 bench/gpu_harness.py "$@"
