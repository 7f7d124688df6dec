"""Training and evaluating agents, in four parts that import one way (each part only those above it):

* ``algorithms`` — one file per objective (SFT, GRPO, RLOO, RFT, DPO, PPO, the reward model), each
  registered by its ``mode:`` name with what it needs; the update routine they share.
* ``rollout`` — rollout engines (vLLM, transformers), the batched multi-turn rollout over
  environments, Ray rollout workers, loading a policy into an engine.
* ``loop`` — ``agentenv train``: the config, the training loop, checkpoints, metrics.
* ``evaluation`` — ``agentenv eval`` under a run's own environment spec, the experiment runner,
  best-of-N, plots, the transcript viewer.
"""
