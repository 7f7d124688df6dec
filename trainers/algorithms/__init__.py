"""The objectives, one file each with its math in the module docstring, and what they share:
padded batches and per-token log-probabilities (``logprobs``), the micro-batched update step and the
learning-rate schedule (``update``). Each objective registers itself by its ``mode:`` name
(``registry``); importing this package registers the built-in ones."""

from agentenv.trainers.algorithms import dpo, grpo, ppo, rft, rloo, sft  # noqa: F401  (they register themselves)
from agentenv.trainers.algorithms.registry import ALGORITHMS, Algorithm, UpdateInputs, get, register

__all__ = ["ALGORITHMS", "Algorithm", "UpdateInputs", "get", "register"]
