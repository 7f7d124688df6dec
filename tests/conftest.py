"""Shared fixtures: the real SmolLM2 tokenizer (from the embedded model), no hub access."""

import os

# Nothing in the tests may reach a model hub: this machine has no internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from agentenv.models import load_tokenizer

    return load_tokenizer("embedded")
