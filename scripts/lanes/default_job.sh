#!/usr/bin/env bash
# Issue 28 item 1: the default job measured quietly from a fresh clone (after the SWFP lanes were stopped at run boundaries).
while pgrep -f benchmarks/faults.py > /dev/null; do sleep 10; done
sleep 20
echo "$(date) default job: load $(cat /proc/loadavg)"
rm -rf <fresh clone> && git clone -q <the checkout> <fresh clone> && cd <fresh clone> && git log --oneline -1
( time bash scripts/setup.sh ) > outputs/fresh_setup.log 2>&1
for seed in 0 3000 4000; do
  echo "$(date) seed $seed load $(cat /proc/loadavg)"
  ( time .venv/bin/python examples/rldt_gym.py seed=$seed hydra.run.dir=outputs/default/seed$seed ) > outputs/default_seed$seed.log 2>&1
  echo "$(date) seed $seed done load $(cat /proc/loadavg)"
done
