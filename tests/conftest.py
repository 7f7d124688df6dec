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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random model saved with the real tokenizer: a folder `--model` and `policy:` take."""
    from agentenv.models import tiny_random_model

    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_random_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
