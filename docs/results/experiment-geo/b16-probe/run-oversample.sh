#!/bin/bash
# Issue 11 lever 4 on dev: dynamic sampling at the B 16 x G 4, lr 5e-5 setting. Each step rolls out
# 32 questions and trains on the first 16 whose group rewards differ (grpo.oversample=2).
cd /work/main
export AGENTENV_ROOT=/work/wt-oversample PYTHONPATH=/work/shim
/work/main/.venv/bin/agentenv train --config configs/cpu-smollm2.yaml \
  --set model.init_from=runs/experiment-geo/sft-agent --set sft.steps=0 --set max_steps=40 \
  --set grpo.questions_per_step=16 --set grpo.group_size=4 --set grpo.oversample=2 --set optim.lr=5.0e-5 --set optim.warmup_steps=5 \
  --set eval.every=20 --set eval.questions=geo:dev --set eval.limit=200 --set checkpoint.every=10 \
  --out runs/b16-probe/grpo-b16-g4-lr5e-5-oversample2 || exit 1
settings="--mode agent --questions geo:dev --max-turns 4 --max-turn-tokens 64 --max-total-tokens 1536 --passages 3 --batch-size 32"
/work/main/.venv/bin/agentenv eval --model runs/b16-probe/grpo-b16-g4-lr5e-5-oversample2 $settings --out runs/b16-probe/dev-eval/oversample2-40
for run in sft-agent b16-probe-40; do
  /work/main/.venv/bin/agentenv eval --compare runs/b16-probe/dev-eval/$run runs/b16-probe/dev-eval/oversample2-40
done
echo OVERSAMPLE-DONE
