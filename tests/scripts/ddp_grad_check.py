"""Run under `accelerate launch --cpu --num_processes=2`: CDP gradients under DDP == single-process gradients.

Every rank builds the same policy (same seed) and the same global batch with pinned noise, timesteps and
probes (the ``cdp.*`` batch keys), takes its half, and backpropagates through the DDP-wrapped policy.
DDP averages the two half-batch gradients, which must equal the full-batch gradient computed on one
process. Rank 0 writes the max abs difference to the path given as argv[1].
"""

import json
import sys

import torch
from accelerate import Accelerator
from lerobot.configs.types import FeatureType, PolicyFeature

import lerobot_policy_cdp  # noqa: F401  (registers cdp)
from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy


def build(estimator: str):
    torch.manual_seed(0)
    cfg = ContractiveDiffusionConfig(
        device="cpu",
        horizon=16,
        n_action_steps=8,
        down_dims=(32, 64),
        diffusion_step_embed_dim=32,
        contraction_estimator=estimator,
        contraction_batch_fraction=1.0,
        contraction_weight=1.0,
        contraction_diag_every=0,
        push_to_hub=False,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (4,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    return ContractiveDiffusionPolicy(cfg).train()


def batch(B=8):
    g = torch.Generator().manual_seed(1)
    return {
        "observation.state": torch.randn(B, 2, 2, generator=g),
        "observation.environment_state": torch.randn(B, 2, 4, generator=g),
        "action": torch.randn(B, 16, 2, generator=g).clamp(-1, 1),
        "action_is_pad": torch.zeros(B, 16, dtype=torch.bool),
        "cdp.noise": torch.randn(B, 16, 2, generator=g),
        "cdp.timesteps": torch.randint(0, 100, (B,), generator=g),
        "cdp.probe": torch.randint(0, 2, (B, 16, 2), generator=g).float() * 2 - 1,
    }


def grads(policy):
    return torch.cat([p.grad.flatten() for p in policy.diffusion.parameters() if p.grad is not None])


def main(out_path: str, estimator: str):
    acc = Accelerator(cpu=True)
    full = batch()
    ref = build(estimator)
    loss, _ = ref.forward(full)
    loss.backward()
    g_ref = grads(ref)

    policy = acc.prepare(build(estimator))
    n = full["action"].shape[0] // acc.num_processes
    part = {k: v[acc.process_index * n : (acc.process_index + 1) * n] for k, v in full.items()}
    loss, info = policy(part)
    acc.backward(loss)
    g_ddp = grads(acc.unwrap_model(policy))
    if acc.is_main_process:
        diff = (g_ddp - g_ref).abs().max().item()
        json.dump(
            {
                "max_abs_diff": diff,
                "grad_norm": g_ref.norm().item(),
                "world": acc.num_processes,
                "contraction_loss": info["contraction_loss"],
            },
            open(out_path, "w"),
        )
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "fd_probe")
