#!/bin/bash
# After the probe: the whole dev split (493) for the SFT agent, the 150-step GRPO row and the probe.
cd /work/main
while pgrep -f "grpo-b16-g4-lr5e-5" > /dev/null; do sleep 10; done
export AGENTENV_ROOT=/work/wt-probe PYTHONPATH=/work/shim
settings="--mode agent --questions geo:dev --max-turns 4 --max-turn-tokens 64 --max-total-tokens 1536 --passages 3 --batch-size 32"
for pair in "sft-agent runs/experiment-geo/sft-agent" "grpo-150 runs/experiment-geo/grpo-agent" "b16-probe-40 runs/b16-probe/grpo-b16-g4-lr5e-5"; do
  set -- $pair
  [ -f runs/b16-probe/dev-eval/$1/summary.json ] || /work/main/.venv/bin/agentenv eval --model $2 $settings --out runs/b16-probe/dev-eval/$1
done
for run in grpo-150 b16-probe-40; do
  /work/main/.venv/bin/agentenv eval --compare runs/b16-probe/dev-eval/sft-agent runs/b16-probe/dev-eval/$run
done
/work/main/.venv/bin/agentenv eval --compare runs/b16-probe/dev-eval/grpo-150 runs/b16-probe/dev-eval/b16-probe-40
echo DEV-EVALS-DONE
