"""Checkpoints that survive ``kill -9``: written to a temporary folder, then renamed into place.

A checkpoint is a folder ``<run>/checkpoints/step_000042/`` holding

    model/          the LoRA adapter (``adapter_model.safetensors``) or the full model, as
                    ``save_pretrained`` writes it, with the tokenizer and the generation config,
                    so it loads with peft / transformers (and ``agentenv eval --model``) by itself
    value_head.safetensors   PPO's value head (``mode: ppo``)
    optimizer.pt    optimizer state
    rng.pt          python, numpy and torch (CPU and CUDA) random states
    state.json      step, data cursor, training phase and whatever else the loop keeps
    config.yaml     the run's config

A rename within one file system is atomic, so a folder named ``step_*`` is always complete; a
killed save leaves only a ``.tmp-*`` folder, which the next save removes. The last ``keep_last``
checkpoints are kept.

Loading runs no code from the folder, so a checkpoint someone shares is safe to resume or
evaluate: weights are safetensors, the ``.pt`` files hold only tensors and plain Python values
and load with ``torch.load(weights_only=True)`` (a file asking for anything else is refused with
its name), and the rest is JSON and YAML read with ``safe_load``. A file that is refused, damaged
(truncated, not JSON) or holds values the loop never writes (``"step": "1"``, a cursor past what
the steps could have taken) raises ``CheckpointError``: one line naming the file and the field.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agentenv.trainers.loop.errors import ConfigError, brief

_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ConfigError, RuntimeError):
    """A checkpoint file that cannot be used: refused as unsafe, damaged, or holding values the
    loop never writes; one line naming the file and what is wrong. A ConfigError, so `agentenv
    train --resume` prints it as one line; a RuntimeError, as a refused file always raised."""


# No step takes more questions (or pairs) than this. The exact cursor depends on the run's config;
# this bound only tells a cursor the loop wrote from a damaged or edited one.
MAX_TAKEN_PER_STEP = 1_000_000


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


# rng.pt files written before numpy's state was stored as a list hold it as an ndarray; these
# rebuild a plain uint32 array and nothing else, so they are allowed when loading rng.pt.
_NUMPY_ARRAY_GLOBALS = [
    np.empty(0).__reduce__()[0],  # numpy's _reconstruct, in numpy.core or numpy._core by version
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


def rng_state() -> dict[str, Any]:
    """The random states as tensors and plain Python values, which ``weights_only`` loads."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),  # (version, 625 ints, gauss_next): plain values already
        "numpy": (kind, keys.tolist(), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: dict[str, Any],
    keep_last: int = 2,
    tokenizer: Any = None,
    modules: Mapping[str, torch.nn.Module] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and drop all but the newest ``keep_last``; ``tokenizer``
    is saved beside the weights, and each of ``modules`` (trained beside the model: PPO's value
    head) as ``<name>.safetensors``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=root))
    model.save_pretrained(staging / "model")
    if tokenizer is not None:
        tokenizer.save_pretrained(staging / "model")
    generation_config = getattr(model, "generation_config", None)  # a LoRA model's is its base's
    if generation_config is not None and not (staging / "model" / "generation_config.json").exists():
        generation_config.save_pretrained(staging / "model")
    if modules:
        from safetensors.torch import save_file

        for name, module in modules.items():
            state_dict = {key: tensor.detach().contiguous() for key, tensor in module.state_dict().items()}
            save_file(state_dict, staging / f"{name}.safetensors")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(rng_state(), staging / "rng.pt")
    (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # state.json last: its presence marks a complete folder even on file systems without rename.
    (staging / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    target = root / f"step_{step:06d}"
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _STEP_DIR.match(path.name)) and (path / "state.json").exists()
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def read_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``state.json``, checked: ``step`` (the folder's number), ``phase``, and each
    cursor a whole number the steps so far could have reached; else CheckpointError naming the field."""
    folder = Path(path)
    file = folder / "state.json"
    remedy = f"delete {folder} to resume from the checkpoint before it, if any"
    try:
        state = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{file}: not valid JSON ({error}): the file is damaged; {remedy}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(state).__name__}; {remedy}")

    def refuse(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{file}: {field!r} {problem}; the file is damaged or was edited: {remedy}")

    for field in ("step", "cursor", "phase"):
        if field not in state:
            raise refuse(field, "is missing")
    step = state["step"]
    if not _is_count(step):
        raise refuse("step", f"must be a whole number ≥ 0, got {brief(step)}")
    numbered = _STEP_DIR.match(folder.name)
    if numbered and int(numbered.group(1)) != step:
        raise refuse("step", f"is {step}, but the folder is checkpoint {int(numbered.group(1))}")
    if not isinstance(state["phase"], str):
        raise refuse("phase", f"must be a string, got {brief(state['phase'])}")
    for field in ("cursor", "item_cursor", "pair_cursor"):
        if field not in state:
            continue
        cursor = state[field]
        if not _is_count(cursor):
            raise refuse(field, f"must be a whole number ≥ 0, got {brief(cursor)}")
        if cursor > step * MAX_TAKEN_PER_STEP:
            steps = f"{step} step{'' if step == 1 else 's'}"
            raise refuse(field, f"is {cursor}, past what {steps} could have taken (at most {MAX_TAKEN_PER_STEP:,} a step)")
    return state


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except SafetensorError as error:
        raise CheckpointError(f"{file}: cannot be read ({error}): the file is damaged") from None


def load_model_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load a checkpoint's adapter (LoRA) or full weights into ``model`` in place."""
    folder = Path(path) / "model"
    if is_lora(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, _load_safetensors(folder / "adapter_model.safetensors"))
        missing = [key for key in result.missing_keys if "lora_" in key]
        if missing:
            raise CheckpointError(f"{folder}: the adapter lacks {len(missing)} LoRA weights, e.g. {missing[0]}")
        return
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(_load_safetensors(shard))
    if not state:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    result = model.load_state_dict(state, strict=False)
    # save_pretrained drops tied weights (lm_head = embeddings); anything else missing is an error.
    tied = {key for key, param in model.state_dict().items() if key not in state and _is_tied(model, key)}
    missing = [key for key in result.missing_keys if key not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{folder}: weights do not fit the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return output is not None and key.startswith("lm_head") and output.weight is model.get_input_embeddings().weight


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    modules: Mapping[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states; return ``state.json``.

    ``optimizer`` may be None to restore only the weights (or when the checkpoint belongs to
    another training phase); ``modules`` are restored from ``<name>.safetensors``. The learning
    rate needs no state of its own: the loop computes it from the step.
    """
    path = Path(path)
    # Every file is read before anything is restored: a refused file leaves the model untouched.
    state = read_state(path)
    module_states = {}
    for name in modules or {}:
        if not (path / f"{name}.safetensors").is_file():
            raise FileNotFoundError(f"{path / f'{name}.safetensors'} is missing: the checkpoint has no {name}")
        module_states[name] = _load_safetensors(path / f"{name}.safetensors")
    optimizer_state = load_tensors(path / "optimizer.pt") if optimizer is not None else None
    rng = load_tensors(path / "rng.pt", allowed=_NUMPY_ARRAY_GLOBALS)
    if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= rng.keys():
        raise CheckpointError(f"{path / 'rng.pt'}: holds no python, numpy and torch random states")
    load_model_weights(path, model)
    for name, module in (modules or {}).items():
        module.load_state_dict(module_states[name])
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path / 'optimizer.pt'}: does not fit this optimizer ({error})") from None
    try:
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path / 'rng.pt'}: not random states agentenv saved ({error})") from None
    return state


def load_tensors(file: str | Path, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(file, weights_only=True)``: tensors and plain Python values, no code run.

    ``allowed`` names further classes or functions the file may use. A file that asks for
    anything else raises CheckpointError naming the file and what it asked for; so does a file
    that is not a whole torch file (truncated, damaged).
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as error:
        asked = re.search(r"GLOBAL (\S+)|but got (<[^>]*>)", str(error))
        detail = f" (it asks for {asked.group(1) or asked.group(2)})" if asked else ""
        raise CheckpointError(
            f"{file}: refused to load{detail}: it holds more than tensors and plain Python values, "
            "and loading it could run code from the file. agentenv writes only those; this file "
            "was made elsewhere or altered. Do not load it unless you trust where it came from."
        ) from None
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, ValueError, OSError) as error:  # torch's words for a truncated or damaged file
        raise CheckpointError(f"{file}: cannot be read ({_first_sentence(error)}): the file is damaged") from None


def _first_sentence(error: Exception) -> str:
    # torch follows the cause with a paragraph of advice.
    text = " ".join(str(error).split())
    return text.split(". ")[0][:200]


# --- the KL reference of a run ----------------------------------------------------------------------


def save_reference(run_dir: Path, model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """The KL reference is the policy GRPO starts from (the SFT warm start, as in InstructGPT), not
    the weights before SFT: copy the model into the frozen reference, and keep it in the run folder
    (``reference.safetensors``) so a resumed run has the same one."""
    from safetensors.torch import save_file

    reference.load_state_dict(model.state_dict())
    state = {name: tensor.detach().contiguous() for name, tensor in reference.state_dict().items()}
    staging = run_dir / ".reference.safetensors.tmp"
    save_file(_untied(state), staging)
    staging.rename(run_dir / "reference.safetensors")


def load_reference(run_dir: Path, reference: torch.nn.Module) -> None:
    path = run_dir / "reference.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this run's KL reference (the policy after SFT) cannot be restored")
    reference.load_state_dict(_load_safetensors(path), strict=False)


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (a tied LM head): keep one of each."""
    seen: set[int] = set()
    kept = {}
    for name, tensor in state.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            kept[name] = tensor
    return kept
