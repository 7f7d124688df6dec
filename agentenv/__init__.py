"""agentenv: Gymnasium environments, tools and a GRPO trainer for LLM agents that reason with search.

``import agentenv`` registers the environments, so ``gymnasium.make("agentenv/SearchQA-v0")`` works.
"""

from agentenv.env import ToolEnv, step_batch
from agentenv.envs import register_envs
from agentenv.parsing import JsonParser, TagParser
from agentenv.rewards import EpisodeOutcome, Reward, RewardConfig
from agentenv.trajectory import Segment, Trajectory

register_envs()

__all__ = [
    "EpisodeOutcome",
    "JsonParser",
    "Reward",
    "RewardConfig",
    "Segment",
    "TagParser",
    "ToolEnv",
    "Trajectory",
    "register_envs",
    "step_batch",
]
