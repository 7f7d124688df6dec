"""How far a LoRA policy moved: ‖ΔW_b − ΔW_a‖_F / ‖ΔW_a‖_F over every adapted matrix, ΔW = B·A.

    python docs/results/experiment-geo/lora_distance.py RUN_A/checkpoints/step_X/model RUN_B/checkpoints/step_Y/model

(The LoRA scale α/r is the same for both adapters and cancels in the ratio.)
"""

import sys

import torch
from safetensors.torch import load_file


def deltas(folder: str) -> dict[str, torch.Tensor]:
    weights = load_file(f"{folder}/adapter_model.safetensors")
    return {
        name.replace(".lora_A.weight", ""): weights[name.replace("lora_A", "lora_B")].float() @ a.float()
        for name, a in weights.items()
        if "lora_A" in name
    }


if __name__ == "__main__":
    before, after = deltas(sys.argv[1]), deltas(sys.argv[2])
    moved = sum(((after[k] - before[k]) ** 2).sum() for k in before) ** 0.5
    size = sum((before[k] ** 2).sum() for k in before) ** 0.5
    print(f"moved {moved / size:.4f} of the first adapter's norm ({len(before)} matrices, ‖ΔW_a‖ = {size:.3f})")
