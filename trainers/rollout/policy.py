"""Load a policy for evaluation from whatever a user points at.

``--model`` may be ``embedded`` (SmolLM2-135M-Instruct), a hub id, a local model folder, a LoRA
adapter folder, a training run (its newest checkpoint is used) or one checkpoint of a run. An
adapter is merged into its base model, so both engines serve it as a plain model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from agentenv.models import EMBEDDED_NAMES, resolve_model


class PolicyNotFound(ValueError):
    """``--model`` names nothing loadable; the message says what was looked for."""


def locate_policy(spec: str) -> tuple[str, str | None]:
    """``(base model, adapter folder or None)`` for a ``--model`` value."""
    if spec in EMBEDDED_NAMES:
        return resolve_model(spec), None
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.startswith((".", "/", "~")) or spec.startswith("runs"):
            raise PolicyNotFound(f"--model {spec}: no such folder")
        return spec, None  # a hub id; transformers says so if it cannot be had offline
    if (path / "checkpoints").is_dir():
        from agentenv.trainers.loop.checkpoint import latest_checkpoint

        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise PolicyNotFound(f"--model {spec}: a training run without a complete checkpoint yet")
        path = checkpoint
    if (path / "model").is_dir():
        path = path / "model"
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise PolicyNotFound(f"{path}/adapter_config.json does not name its base model")
        return resolve_model(base), str(path)
    if (path / "config.json").is_file():
        return str(path), None
    raise PolicyNotFound(
        f"--model {spec}: not a model folder (no config.json), LoRA adapter (no adapter_config.json) "
        "or training run (no checkpoints/)"
    )


def tokenizer_source(model_dir: str) -> str:
    """Where the tokenizer of ``model_dir`` is: the folder itself, or, for a fully fine-tuned
    checkpoint (which holds weights only), the model its run was trained from (checkpoint/config.yaml)."""
    folder = Path(model_dir)
    if not folder.is_dir() or (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        return model_dir
    run_config = folder.parent / "config.yaml"
    if folder.name == "model" and run_config.is_file():
        from agentenv.yaml_files import load_yaml

        config = load_yaml(run_config.read_text(), str(run_config)) or {}
        model = config.get("model") if isinstance(config, dict) else None
        name = model.get("name", "embedded") if isinstance(model, dict) else "embedded"
        return "embedded" if name == "tiny-random" else name
    return model_dir


def load_policy_model(spec: str, dtype: str = "auto"):
    """``(model, tokenizer, description)`` with any adapter merged in."""
    from transformers import AutoModelForCausalLM

    from agentenv.models import load_tokenizer
    from agentenv.trainers.rollout.engines import default_dtype

    base, adapter = locate_policy(spec)
    try:
        tokenizer = load_tokenizer(tokenizer_source(base))
        model = AutoModelForCausalLM.from_pretrained(base, dtype=default_dtype(dtype))
    except OSError as error:
        raise PolicyNotFound(f"--model {spec}: cannot load {base}: {error}") from None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    description = base if adapter is None else f"{base} + adapter {adapter}"
    return model, tokenizer, description


def load_policy_engine(
    spec: str, engine: str = "auto", dtype: str = "auto", **vllm_kwargs: Any
) -> tuple[Any, Any, str]:
    """``(engine, tokenizer, description)`` ready to generate for the policy ``spec``;
    ``vllm_kwargs`` go to ``VLLMEngine``."""
    import sys

    from agentenv.trainers.rollout.engines import TransformersEngine, VLLMEngine, choose_engine

    engine, why = choose_engine(engine, locate_policy(spec)[0])
    print(f"rollout engine: {engine} ({why})", file=sys.stderr)
    if engine == "transformers":
        model, tokenizer, description = load_policy_model(spec, dtype)
        return TransformersEngine(model, tokenizer), tokenizer, description
    base, adapter = locate_policy(spec)
    if adapter is None:
        from agentenv.models import load_tokenizer

        return VLLMEngine(base, dtype=dtype, **vllm_kwargs), load_tokenizer(tokenizer_source(base)), base
    # vLLM serves the merged model from a folder; it lives as long as the process.
    model, tokenizer, description = load_policy_model(spec, dtype)
    folder = tempfile.mkdtemp(prefix="agentenv-merged-")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return VLLMEngine(folder, dtype=dtype, **vllm_kwargs), tokenizer, description
