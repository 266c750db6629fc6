"""Inference speed of one cdp checkpoint under LeRobot's DDPM-100 vs DDIM-10 vs DPM-Solver++-10.

    python benchmarks/inference_speed.py [--policy-path CKPT/pretrained_model] [--full] [--device cuda]

Without ``--policy-path`` a policy with the given architecture is built in-process (weights do not change
the cost). For each sampler the same weights are used; ``select_action`` is timed from an empty action
queue (one chunk is sampled: the latency a robot sees at a re-plan) and averaged over a full queue cycle
(actions per second). Ratios are to DDPM-100 in the same run; results go to ``benchmarks/RESULTS.md``
(section ``inference``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

import lerobot_policy_cdp  # noqa: F401
from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy

sys.path.insert(0, str(Path(__file__).parent))
from contraction_cost import write_section

SAMPLERS = {
    "DDPM-100 (LeRobot default)": ("ddpm", 100),
    "DDIM-10": ("ddim", 10),
    "DPM-Solver++(2M)-10": ("dpmsolver++", 10),
}


def load_policy(path: str | None, full: bool, device: str) -> ContractiveDiffusionPolicy:
    if path:
        return ContractiveDiffusionPolicy.from_pretrained(path).to(device)
    arch = {} if full else {"down_dims": (64, 128, 256), "diffusion_step_embed_dim": 64}
    cfg = ContractiveDiffusionConfig(
        device=device,
        horizon=16,
        n_action_steps=8,
        push_to_hub=False,
        **arch,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (16,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
    )
    return ContractiveDiffusionPolicy(cfg).to(device)


def set_sampler(policy: ContractiveDiffusionPolicy, sampler: str, steps: int) -> None:
    """Same weights, another sampler: rebuild the (parameter-free) model scheduler fields."""
    from cdp_plugin.samplers import make_scheduler

    cfg = policy.config
    cfg.sampler, cfg.num_inference_steps = sampler, steps
    m = policy.diffusion
    m.num_inference_steps = steps
    m.sampling_scheduler = make_scheduler(sampler, m.noise_scheduler)


def observation(policy, device):
    obs = {}
    for k, ft in policy.config.input_features.items():
        obs[k] = torch.rand(1, *ft.shape, device=device)
    return obs


@torch.no_grad()
def measure(policy, device: str, repeats: int) -> tuple[float, float]:
    obs = observation(policy, device)
    latencies, per_action = [], []
    policy.eval()
    for _ in range(repeats + 1):
        policy.reset()
        t0 = time.perf_counter()
        policy.select_action(dict(obs))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        for _ in range(policy.config.n_action_steps - 1):
            policy.select_action(dict(obs))
        t2 = time.perf_counter()
        latencies.append(t1 - t0)
        per_action.append((t2 - t0) / policy.config.n_action_steps)
    return statistics.median(latencies[1:]), 1.0 / statistics.median(per_action[1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy-path")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    policy = load_policy(args.policy_path, args.full, args.device)
    res = {}
    for name, (sampler, steps) in SAMPLERS.items():
        set_sampler(policy, sampler, steps)
        res[name] = measure(policy, args.device, args.repeats)
        print(f"{name:28s} latency {1000 * res[name][0]:8.1f} ms   {res[name][1]:8.1f} actions/s", flush=True)
    base = res["DDPM-100 (LeRobot default)"][0]
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    lines = [
        (
            f"Inference speed of one cdp policy — `python benchmarks/inference_speed.py{' --full' if args.full else ''}`,"
            f" {card}, {datetime.date.today().isoformat()}, horizon {policy.config.horizon}, n_action_steps"
            f" {policy.config.n_action_steps}, down_dims {tuple(policy.config.down_dims)}, median of {args.repeats}."
        ),
        "",
        "| sampler | chunk latency (ms) | speed-up vs DDPM-100 | actions / s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {1000 * lat:.1f} | {base / lat:.1f}x | {aps:.1f} |" for n, (lat, aps) in res.items()]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        write_section(text, "inference-full" if args.full else "inference")


if __name__ == "__main__":
    main()
