#!/usr/bin/env bash
# The final tables, on held-out seeds 3000, 4000 and 5000 (never used for a choice; the tuning
# seeds are 0, 1, 1000 and 2000), each made by one command:
#
#   bash benchmarks/heldout.sh metaworld   # RLDT (the shipped Meta-World defaults), RLDT-Delta, ReinFlow,
#                                          # FPO++ and DPPO on 4 sparse-reward tasks, 500k env steps
#   bash benchmarks/heldout.sh gym_1m      # RLDT, ReinFlow and DPPO on Hopper, Walker2d and HalfCheetah,
#                                          # 1M env steps, evaluations every 50k
#
# Each task is a benchmarks/compare_gym.py comparison (compare_gym_<task>_heldout.*), then
# benchmarks/gym_table.py writes the table across tasks (gym_table_heldout_<name>.md). Every run
# keeps its record (summary.json and CSV logs; checkpoints are not committed) under RUNS, so a
# finished run is reused and an interrupted one resumes from its checkpoint.
# Environment: PY (.venv/bin/python where it exists, else python), JOBS (runs at a time, 1), RUNS
# (benchmarks/results/heldout_runs) and OUT (benchmarks/results), both relative to the repository's
# root; TASKS and METHODS run a part of the table (e.g. METHODS="reinflow fpo"): its comparisons'
# outputs then hold only that part, and the plain command, run at the end, reuses every finished
# run and writes the whole table. A failed run stops the script (its log names the run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
JOBS=${JOBS:-1}
RUNS=${RUNS:-benchmarks/results/heldout_runs}
OUT=${OUT:-benchmarks/results}
SEEDS="3000 4000 5000"
slug() { echo "$1" | tr 'A-Z/' 'a-z-'; }

case "${1:-}" in
  metaworld)
    tasks=(${TASKS:-MetaWorld/Assembly-v3 MetaWorld/PickPlace-v3 MetaWorld/StickPush-v3 MetaWorld/Disassemble-v3})
    methods=${METHODS:-rldt rldt_delta reinflow fpo dppo}
    for task in "${tasks[@]}"; do
      $PY benchmarks/compare_gym.py --task "$task" --methods $methods --seeds $SEEDS --env-steps 500000 \
        --jobs "$JOBS" --runs "$RUNS" --out "$OUT" --name "compare_gym_$(slug "$task")_heldout"
    done
    ;;
  gym_1m)
    tasks=(${TASKS:-Hopper-v5 Walker2d-v5 HalfCheetah-v5})
    methods=${METHODS:-rldt reinflow dppo}
    declare -A anchor=([Hopper-v5]=3300 [Walker2d-v5]=4100 [HalfCheetah-v5]=5300)  # ReinFlow/DPPO papers' finals
    for task in "${tasks[@]}"; do
      if [ -z "${anchor[$task]:-}" ]; then
        echo "no anchor (the ReinFlow/DPPO papers' final return) for $task; known: ${!anchor[*]}" >&2
        exit 2
      fi
      $PY benchmarks/compare_gym.py --task "$task" --methods $methods --seeds $SEEDS --env-steps 1000000 \
        --set eval.every_env_steps=50000 --threshold "${anchor[$task]}" \
        --jobs "$JOBS" --runs "$RUNS" --out "$OUT" --name "compare_gym_$(slug "$task")_heldout"
    done
    ;;
  *)
    echo "usage: bash benchmarks/heldout.sh metaworld|gym_1m" >&2
    exit 2
    ;;
esac
if [ -z "${TASKS:-}${METHODS:-}" ]; then  # the whole table: gather it
  $PY benchmarks/gym_table.py --tasks "${tasks[@]}" --methods $methods --suffix _heldout \
    --results "$OUT" --out "$OUT/gym_table_heldout_$1.md"
fi
