#!/usr/bin/env bash
# Issue 27 item 5: the held-out table's baselines, which no RLDT choice touches (ReinFlow, then
# FPO++, then DPPO; 4 tasks x seeds 3000, 4000, 5000 x 500k). Each finished run's record is copied
# into benchmarks/results/heldout_runs/ and committed, so the plain `bash benchmarks/heldout.sh
# metaworld` of a later session reuses it. Worktree pinned at 04919e7.  WT=/work/wt-h bash lane_h2.sh
WT=${WT:-/work/wt-h}
cd "$WT" || exit 1
export PYTHONPATH=$WT OMP_NUM_THREADS=1 PY=${PY:-/work/main/.venv/bin/python}
for method in ${METHODS_ORDER:-reinflow fpo dppo}; do
  METHODS=$method RUNS=/work/runs/heldout_runs OUT=/work/runs/heldout_results bash benchmarks/heldout.sh metaworld || exit 1
done
