"""Rollout workers on Ray: each worker holds a rollout engine and its own environments and tools.

::

    config = load_config("configs/tiny-test.yaml", ["engine.workers=2"])
    workers = RolloutWorkers(config)              # a local Ray unless one is running; one actor each
    workers.update_weights(model)                 # ray.put once; every worker loads that one object
    batch = workers.rollout(questions, group_size=G, sampling=SamplingConfig(temperature=1.0, seed=0))
    batch.episodes                                # B x G episodes in global order, as rollout() returns them
    workers.close()

With ``engine.workers: N`` the trainer builds a ``RolloutWorkers`` in place of its engine
(trainers/loop/train.py). A worker is a Ray actor that receives the training config as plain data
and builds what the training process would (trainers/loop/build.py): the tokenizer, environments
from the run's spec with their tools built once (``env_factory``: one search index or retriever client
per worker, shared by its environments) and an engine (``build_engine``: vLLM where
installed, else transformers on a plain copy of the base model). It runs the same ``rollout()`` on
its shard and sends back the finished ``RolloutBatch``: token ids, masks, engine logprobs, reward
components, timings. Generation and tool calls scale together.

Shards are whole questions (a GRPO group stays on one worker), contiguous and as even as possible.
Shard k starts at episode ``episode_offset = first question x G``, and ``rollout()`` seeds every
episode from (step seed, global episode index, turn), so the merged batch is, episode for episode,
the batch one process would have sampled (the engines sample each prompt from its own stream).
Group indices are renumbered to the whole batch.

Weights. ``update_weights(model)`` puts the weights into the object store once (``ray.put``) and
every worker loads that same object: the state dict of a full model, or for a peft LoRA model the
base weights with the adapter merged in (``merged_weights``, what the CPU vLLM engine takes too). A
worker whose vLLM engine serves adapters (on a GPU, ``lora_rank``) gets the adapter's files instead.
``engine.weight_sync: nccl`` broadcasts the tensors trainer -> engines over NCCL instead
(``NCCLWeightBroadcast``; GPU only, and untested: no GPU was lent while this was written).

Faults. A worker that dies (``ray.kill``, an OOM kill, a lost node) surfaces as ``RayActorError`` on
its shard. The shard is not lost and not counted twice: the dead actor's result never arrived, so a
fresh actor with the same resources is started, loads the newest weights, and runs the whole shard
again with the same seeds (the same episodes). After ``engine.worker_restarts`` deaths of one worker
in one call, ``WorkerError`` names the worker and the cause; ``agentenv train --resume`` continues
from the newest checkpoint.

One step off the policy (``rollout.off_policy_steps: 1``). ``prefetch(questions, G, sampling)``
starts a rollout and returns at once; a later ``rollout()`` with the same arguments collects it.
The trainer prefetches step t+1's batch before it updates on step t's, so the workers sample while
it trains; the weight sync after the update queues behind that rollout on every actor (an actor runs
its calls in order), so the prefetched batch is sampled by the weights one update old, and its
``behaviour_lag`` says so. A worker that dies during a prefetched rollout is handled as above when
the batch is collected; its redone shard is sampled by the weights the fresh worker was loaded with,
which its engine logprobs (the off-policy ratio's π_behav) record.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from agentenv.tools.retrieval_client import contiguous_parts
from agentenv.trainers.rollout.engines import (
    Completion,
    SamplingConfig,
    prompt_seeds,
    state_weights,
)
from agentenv.trainers.rollout.rollout import RolloutBatch, rollout


class WorkerError(RuntimeError):
    """A rollout worker died and could not be brought back within ``engine.worker_restarts``."""


def require_ray():
    """``import ray``, or a ConfigError with the command that installs it."""
    try:
        import ray
    except ImportError:
        from agentenv.trainers.loop.config import ConfigError

        raise ConfigError(
            "engine.workers > 0 needs Ray, which is not installed: pip install 'agentenv[ray]'"
        ) from None
    return ray


# --- the worker: one Ray actor ---------------------------------------------------------------------


class RolloutWorker:
    """An engine, environments and tools in a process of their own (created through Ray, as
    ``ray.remote(RolloutWorker).options(...).remote(to_dict(config), index)``)."""

    def __init__(self, config_data: dict[str, Any], index: int):
        from agentenv.models import resolve_model
        from agentenv.trainers.loop.build import (
            TINY_RANDOM,
            Policy,
            build_engine,
            env_factory,
            env_spec,
            load_policy_tokenizer,
            resolve_dtype,
        )
        from agentenv.trainers.loop.config import config_from_dict
        from agentenv.trainers.rollout.engines import VLLMEngine

        config = config_from_dict(config_data)
        # Inside the worker the engine is in-process: engine.workers 0, or build_engine starts workers.
        self.config = config = replace(config, engine=replace(config.engine, workers=0))
        self.index = index
        # Ray sets OMP_NUM_THREADS to the worker's CPUs; torch reads it late or not at all.
        torch.set_num_threads(max(1, int(config.engine.worker_num_cpus)))
        self.tokenizer = load_policy_tokenizer(config)
        # One factory for the worker's life: however many environments a rollout needs, they
        # share its tools (one index or retriever client per worker).
        self.env_factory = env_factory(config, env_spec(config), self.tokenizer)
        self.envs = self.env_factory.make(1)
        model_path = None if config.model.name == TINY_RANDOM else resolve_model(config.model.name)
        dtype = resolve_dtype(config.model.dtype)
        model = base_model(config, self.tokenizer, model_path, dtype)
        self.engine = build_engine(config, Policy(model, self.tokenizer, None, model_path, dtype), self.envs[0])
        self.serves_adapter = isinstance(self.engine, VLLMEngine) and self.engine.lora_rank is not None
        self.generate_delay_s = 0.0
        self._broadcast: NCCLWeightBroadcast | None = None

    def ready(self) -> dict[str, Any]:
        """What the trainer needs to know: the engine, whether it serves adapters, where it runs."""
        import os

        return {
            "index": self.index,
            "engine": type(self.engine).__name__,
            "serves_adapter": self.serves_adapter,
            "pid": os.getpid(),
            "node": socket.gethostname(),
        }

    def load_weights(self, payload: dict[str, Any]) -> None:
        """``weights_payload``'s output: named arrays, or ``{"adapter": {file name: bytes}}``."""
        if "adapter" in payload:
            folder = self.engine.adapter_folder()
            folder.mkdir(parents=True)
            for name, data in payload["adapter"].items():
                (folder / name).write_bytes(data)
            self.engine.load_adapter(folder)
        else:
            self.engine.load_weights([(name, _from_array(array, dtype)) for name, array, dtype in payload["weights"]])

    def rollout(
        self, questions: list[dict[str, Any]], group_size: int, sampling: SamplingConfig, episode_offset: int
    ) -> RolloutBatch:
        """The shard's ``len(questions) x group_size`` episodes, seeded as episodes
        ``episode_offset ...`` of the whole batch."""
        count = len(questions) * group_size
        if len(self.envs) < count:
            self.envs = self.envs + self.env_factory.make(count - len(self.envs))
        engine = _Delayed(self.engine, self.generate_delay_s) if self.generate_delay_s else self.engine
        return rollout(engine, self.envs[:count], questions, group_size, sampling, episode_offset=episode_offset)

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, max_new_tokens: list[int] | None = None
    ) -> list[Completion]:
        return self.engine.generate(prompts, sampling, max_new_tokens)

    def set_generate_delay(self, seconds: float) -> None:
        """Test hook: sleep before every engine call of a rollout, so a test can kill the worker
        while a rollout is under way."""
        self.generate_delay_s = seconds

    # GPU only, untested here (see NCCLWeightBroadcast).
    def join_weight_broadcast(self, host: str, port: int, world_size: int, rank: int) -> None:
        self._broadcast = NCCLWeightBroadcast(host, port, world_size, rank)

    def receive_weights(self, specs: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None:
        self.engine.load_weights(self._broadcast.receive(specs))


class _Delayed:
    """An engine that sleeps before each call (``set_generate_delay``)."""

    def __init__(self, engine: Any, seconds: float):
        self.engine, self.seconds = engine, seconds

    def generate(self, prompts, sampling, max_new_tokens=None):
        time.sleep(self.seconds)
        return self.engine.generate(prompts, sampling, max_new_tokens)


def base_model(config: Any, tokenizer: Any, model_path: str | None, dtype: torch.dtype) -> torch.nn.Module | None:
    """A worker's own plain (never peft) copy of the base model for the transformers engine; None
    where the engine is vLLM, which loads its own. Its weights are replaced at the first sync."""
    from agentenv.trainers.rollout.engines import choose_engine

    kind, _ = choose_engine(config.engine.kind, model_path)
    if kind != "transformers":
        return None
    if model_path is None:
        from agentenv.models import tiny_random_model

        model = tiny_random_model(
            tokenizer, hidden_size=config.model.tiny_hidden_size, layers=config.model.tiny_layers, seed=config.seed
        ).to(dtype)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    return model.cuda() if torch.cuda.is_available() else model


# --- the trainer's side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    worker: int
    method: str
    args: tuple[Any, ...]


@dataclass
class _Pending:
    """Calls sent to the workers, not yet collected: each in-flight result ref -> (call index,
    the incarnation of the worker it was sent to)."""

    calls: list[_Call]
    refs: dict[Any, tuple[int, int]] = field(default_factory=dict)
    first_groups: list[int] = field(default_factory=list)  # a rollout's shards: their first question
    behaviour_lag: int = 0  # a rollout's: updates between its sampling weights and the trainer's


def _rollout_key(questions: list[dict[str, Any]], group_size: int, sampling: SamplingConfig) -> tuple[Any, ...]:
    return (tuple(q.get("id", repr(q)) for q in questions), group_size, sampling)


class RolloutWorkers:
    """``engine.workers`` rollout workers, used by the trainer as its rollout engine.

    ``rollout(questions, group_size, sampling)`` runs the episodes on the workers; ``generate`` and
    ``update_weights`` make it a ``RolloutEngine`` too (the held-out curve's evaluation runs its
    environments in the trainer and sends each turn's prompts to the workers).

    Args:
        config: the training config; ``engine.*`` says how many workers, their resources, the
            placement strategy, the restarts allowed and the Ray cluster.
    """

    def __init__(self, config: Any):
        from agentenv.trainers.loop.config import to_dict

        ray = require_ray()
        engine = config.engine
        self._started_ray = False
        if not ray.is_initialized():
            # A local Ray needs no dashboard; a cluster's address takes no resource arguments.
            options = {"include_dashboard": False} if engine.ray_address is None else {}
            ray.init(address=engine.ray_address, **options)
            self._started_ray = True
        self.config = config
        self.config_data = to_dict(config)
        self.max_restarts = engine.worker_restarts
        self.restarts = 0  # workers replaced since the start
        self._weights = None  # the object-store ref of the newest weights, for restarted workers
        self._prefetched: dict[tuple[Any, ...], _Pending] = {}  # rollouts started by prefetch()
        self._broadcast: NCCLWeightBroadcast | None = None  # engine.weight_sync: nccl
        self.actors: list[Any] = []
        self._resources = {"num_cpus": engine.worker_num_cpus, "num_gpus": engine.worker_num_gpus}
        self._placement = self._placement_group(engine)
        self.actors = [self._start(w) for w in range(engine.workers)]
        self._incarnations = [0] * engine.workers
        try:
            self.info = ray.get([actor.ready.remote() for actor in self.actors])
        except ray.exceptions.RayActorError as error:
            self.close()
            raise WorkerError(f"a rollout worker failed to start: {_cause(error)}") from error
        self.serves_adapter = any(info["serves_adapter"] for info in self.info)
        engines = sorted({info["engine"] for info in self.info})
        print(f"agentenv train: {engine.workers} rollout worker(s) on Ray, {', '.join(engines)}", file=sys.stderr)

    def _placement_group(self, engine: Any):
        """One bundle per worker, ``engine.worker_placement`` across nodes; None without resources."""
        ray = require_ray()
        from ray.util.placement_group import placement_group

        bundle = {name: amount for name, amount in (("CPU", engine.worker_num_cpus), ("GPU", engine.worker_num_gpus)) if amount > 0}
        if not bundle:
            return None
        group = placement_group([bundle] * engine.workers, strategy=engine.worker_placement)
        try:
            ray.get(group.ready(), timeout=120)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(group)
            raise WorkerError(
                f"engine.workers: {engine.workers} workers of {bundle} ({engine.worker_placement}) do not fit "
                f"the Ray cluster's resources {ray.cluster_resources()}; lower engine.workers or "
                "engine.worker_num_cpus / worker_num_gpus, or add nodes (ray start --address=...)"
            ) from None
        return group

    def _start(self, worker: int):
        ray = require_ray()
        options: dict[str, Any] = {**self._resources, "max_restarts": 0}  # restarts are ours: re-sync, redo
        if self._placement is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self._placement, placement_group_bundle_index=worker
            )
        return ray.remote(RolloutWorker).options(**options).remote(self.config_data, worker)

    # --- what the trainer calls ---

    def rollout(self, questions: list[dict[str, Any]], group_size: int, sampling: SamplingConfig) -> RolloutBatch:
        """``len(questions) x group_size`` episodes, split by whole questions across the workers
        and merged back in order; the same episodes ``rollout()`` samples in one process. A rollout
        that ``prefetch`` started with these arguments is collected instead of sampled again."""
        key = _rollout_key(questions, group_size, sampling)
        pending = self._prefetched.pop(key, None)
        if pending is None:
            pending = self._rollout_calls(questions, group_size, sampling, behaviour_lag=0)
        batch = merge_batches(self._collect(pending), pending.first_groups, group_size)
        batch.behaviour_lag = pending.behaviour_lag
        return batch

    def prefetch(self, questions: list[dict[str, Any]], group_size: int, sampling: SamplingConfig,
                 behaviour_lag: int = 1) -> None:
        """Start ``rollout(questions, group_size, sampling)`` now and return; the rollout call with
        the same arguments collects it. Weights synced after this reach the workers after it, so the
        batch is sampled by the weights they hold now; ``behaviour_lag``: how many updates the
        trainer makes before it trains on it (the batch's ``behaviour_lag``). Starting the same
        rollout again is a no-op."""
        key = _rollout_key(questions, group_size, sampling)
        if key not in self._prefetched:
            self._prefetched[key] = self._rollout_calls(questions, group_size, sampling, behaviour_lag)

    def _rollout_calls(self, questions: list[dict[str, Any]], group_size: int, sampling: SamplingConfig,
                       behaviour_lag: int) -> _Pending:
        shards = contiguous_parts(len(questions), len(self.actors))
        calls = [
            _Call(worker, "rollout", (list(questions[start:stop]), group_size, sampling, start * group_size))
            for worker, (start, stop) in enumerate(shards)
        ]
        pending = self._submit(calls)
        pending.first_groups = [start for start, _ in shards]
        pending.behaviour_lag = behaviour_lag
        return pending

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, max_new_tokens: list[int] | None = None
    ) -> list[Completion]:
        """One completion per prompt, the prompts split evenly across the workers; each keeps the
        seed it has in one call (``seed + i``)."""
        seeds = prompt_seeds(prompts, sampling)
        calls = []
        for worker, (start, stop) in enumerate(contiguous_parts(len(prompts), len(self.actors))):
            part = replace(sampling, seeds=None if seeds is None else tuple(seeds[start:stop]))
            limits = None if max_new_tokens is None else list(max_new_tokens[start:stop])
            calls.append(_Call(worker, "generate", (list(prompts[start:stop]), part, limits)))
        return [completion for part in self._run(calls) for completion in part]

    def update_weights(self, model: torch.nn.Module) -> None:
        """Every worker samples from ``model``'s weights from now on: one ``ray.put``, one object
        read by all workers (and by any worker restarted later)."""
        ray = require_ray()
        if self.config.engine.weight_sync == "nccl":
            self._broadcast_weights(model)
            return
        self._weights = ray.put(weights_payload(model, adapter=self.serves_adapter))
        self._run([_Call(worker, "load_weights", (self._weights,)) for worker in range(len(self.actors))])

    def close(self) -> None:
        """Stop the workers (and the local Ray this object started)."""
        ray = require_ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._placement is not None:
            ray.util.remove_placement_group(self._placement)
            self._placement = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # --- calls that survive a worker's death ---

    def _run(self, calls: list[_Call]) -> list[Any]:
        """Each call's result, in order (``_submit`` then ``_collect``)."""
        return self._collect(self._submit(calls))

    def _submit(self, calls: list[_Call]) -> _Pending:
        pending = _Pending(calls)
        for i in range(len(calls)):
            self._send(pending, i)
        return pending

    def _send(self, pending: _Pending, i: int) -> None:
        call = pending.calls[i]
        ref = getattr(self.actors[call.worker], call.method).remote(*call.args)
        pending.refs[ref] = (i, self._incarnations[call.worker])

    def _collect(self, pending: _Pending) -> list[Any]:
        """Wait for each call's result. A call whose worker died is run again, whole, on a fresh
        worker (restarted once however many of its calls were pending, in this or another
        ``_Pending``): a result arrives only from a call that finished, so nothing is lost or
        counted twice."""
        ray = require_ray()
        results: list[Any] = [None] * len(pending.calls)
        deaths: dict[int, int] = defaultdict(int)
        while pending.refs:
            [ref], _ = ray.wait(list(pending.refs), num_returns=1)
            i, incarnation = pending.refs.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                worker = pending.calls[i].worker
                if incarnation == self._incarnations[worker]:  # not replaced yet for another call
                    self._replace(worker, error, deaths)
                self._send(pending, i)
        return results

    def _replace(self, worker: int, error: Exception, deaths: dict[int, int]) -> None:
        """A fresh actor in the dead one's place, on the newest weights; WorkerError once the worker
        has died more than ``max_restarts`` times in this call."""
        ray = require_ray()
        while True:
            deaths[worker] += 1
            if deaths[worker] > self.max_restarts:
                raise WorkerError(
                    f"rollout worker {worker} of {len(self.actors)} died {deaths[worker]} time(s) in one call and "
                    f"was not brought back (engine.worker_restarts: {self.max_restarts}); last cause: {_cause(error)}"
                ) from error
            print(f"agentenv train: rollout worker {worker} died ({_cause(error)}); restarting it "
                  f"({deaths[worker]} of {self.max_restarts})", file=sys.stderr, flush=True)
            ray.kill(self.actors[worker], no_restart=True)  # frees its bundle now
            self.actors[worker] = self._start(worker)
            self._incarnations[worker] += 1
            try:
                ray.get(self.actors[worker].ready.remote())
                if self._weights is not None:
                    ray.get(self.actors[worker].load_weights.remote(self._weights))
            except ray.exceptions.RayActorError as again:
                error = again
                continue
            self.restarts += 1
            return

    # --- GPU only: NCCL broadcast (untested here) ---

    def _broadcast_weights(self, model: torch.nn.Module) -> None:
        """``engine.weight_sync: nccl``: the trainer (rank 0) broadcasts every tensor to the workers'
        engines (ranks 1..N), as verl and OpenRLHF do. GPU only, untested: no GPU was lent here.
        A restarted worker would need the group formed again; this path does not do that."""
        ray = require_ray()
        if self._broadcast is None:
            host = ray.util.get_node_ip_address()
            port = _free_port()
            world_size = len(self.actors) + 1
            joins = [actor.join_weight_broadcast.remote(host, port, world_size, w + 1) for w, actor in enumerate(self.actors)]
            self._broadcast = NCCLWeightBroadcast(host, port, world_size, rank=0)
            ray.get(joins)
        weights = state_weights(model)
        receives = [actor.receive_weights.remote([(n, t.dtype, tuple(t.shape)) for n, t in weights]) for actor in self.actors]
        self._broadcast.send(weights)
        ray.get(receives)


class NCCLWeightBroadcast:
    """GPU only, untested here (no GPU was lent while this was written): trainer -> engines over
    NCCL, with vLLM's documented building blocks for it (its RLHF example): a
    ``StatelessProcessGroup`` (a process group that leaves torch.distributed's global one alone, so
    the trainer's own may exist beside it) and a ``PyNcclCommunicator`` on it. Rank 0 sends, every
    engine receives into fresh tensors of the announced names, dtypes and shapes and loads them
    (``VLLMEngine.load_weights``: vLLM's ``reload_weights``)."""

    def __init__(self, host: str, port: int, world_size: int, rank: int):
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self.communicator = PyNcclCommunicator(group, device=torch.cuda.current_device())

    def send(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        for _, tensor in weights:
            self.communicator.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())
        torch.cuda.synchronize()

    def receive(self, specs: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> list[tuple[str, torch.Tensor]]:
        weights = []
        for name, dtype, shape in specs:
            tensor = torch.empty(shape, dtype=dtype, device="cuda")
            self.communicator.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
            weights.append((name, tensor))
        torch.cuda.synchronize()
        return weights


# --- pieces ----------------------------------------------------------------------------------------


def merge_batches(batches: list[RolloutBatch], first_groups: list[int], group_size: int) -> RolloutBatch:
    """The shards as one batch, in order, group indices renumbered (shard k's groups start at
    ``first_groups[k]``). Workers run side by side: the seconds are the slowest shard's, so
    ``generated_tokens_per_s`` is the whole pool's."""
    episodes = [
        replace(episode, group=episode.group + first)
        for batch, first in zip(batches, first_groups, strict=True)
        for episode in batch.episodes
    ]
    reasons: dict[str, int] = defaultdict(int)
    for batch in batches:
        for reason, count in batch.turn_finish_reasons.items():
            reasons[reason] += count
    return RolloutBatch(
        episodes=episodes,
        group_size=group_size,
        tool_names=tuple(sorted({name for batch in batches for name in batch.tool_names})),
        passage_tools=any(batch.passage_tools for batch in batches),
        generation_seconds=max((b.generation_seconds for b in batches), default=0.0),
        env_seconds=max((b.env_seconds for b in batches), default=0.0),
        generated_tokens=sum(b.generated_tokens for b in batches),
        engine_calls=sum(b.engine_calls for b in batches),
        turn_finish_reasons=dict(reasons),
    )


def weights_payload(model: torch.nn.Module, adapter: bool = False) -> dict[str, Any]:
    """What ``update_weights`` puts into the object store: ``{"weights": [(name, array, dtype)]}``
    (a full model, or a LoRA model merged), or with ``adapter`` and a peft model the adapter's files
    ``{"adapter": {name: bytes}}`` for engines that serve adapters.

    Numpy arrays, not tensors: Ray stores arrays out of band and workers on the node map them
    without a copy, while tensors are pickled. SmolLM2-135M's 651 MB took 0.9-1.0 s put and loaded
    as arrays against 3.2-4.2 s as tensors (2 cores). bfloat16, which numpy lacks, travels as int16.
    """
    from agentenv.trainers.rollout.engines import _is_peft_model

    if adapter and _is_peft_model(model):
        with tempfile.TemporaryDirectory(prefix="agentenv-adapter-") as folder:
            model.save_pretrained(folder)
            return {"adapter": {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}}
    return {"weights": [(name, *_to_array(tensor)) for name, tensor in state_weights(model)]}


def _to_array(tensor: torch.Tensor) -> tuple[Any, str]:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy(), "bfloat16"
    return tensor.numpy(), str(tensor.dtype).removeprefix("torch.")


def _from_array(array: Any, dtype: str) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        # The object store's arrays are read-only; the engine copies them into its own weights.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _cause(error: Exception) -> str:
    """Ray's actor errors span many lines; one line of at most 300 characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]
