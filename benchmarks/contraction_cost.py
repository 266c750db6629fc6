"""What the contraction penalty costs: train-step time and peak memory vs plain DP, side by side.

    python benchmarks/contraction_cost.py            # small UNet, CPU-sized (a few minutes on 2 cores)
    python benchmarks/contraction_cost.py --full     # LeRobot's default UNet (512/1024/2048), for a GPU

For LeRobot's diffusion UNet at D = horizon * action_dim in {32, 112, 224} (horizon 16, action dim 2/7/14)
it times one training step (forward + backward + AdamW) for:

* DP: LeRobot's ``DiffusionPolicy`` (same architecture, x0 prediction), the reference,
* CDP with each estimator at its default settings (``fd_probe`` default, ``hutchinson``, the ``lanczos`` and
  ``fd_ritz`` hinges),
* the official construction: the full Jacobian by one create_graph backward per output coordinate
  (``contraction_estimator=exact`` on the whole batch).

Every time is a ratio to DP measured in the same process (median over steps after warm-up). Peak memory is
CUDA's max allocated on a GPU and the process' peak RSS growth on a CPU (``/proc/self/clear_refs``).
It also reports each estimator's accuracy against the exact Jacobian on the same batch: Lanczos
lambda_max / lambda_min of sym J_x0 (relative to the spectral spread) and the Frobenius estimators'
relative error. The table is printed and written to ``benchmarks/RESULTS.md`` (section ``cost``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

import lerobot_policy_cdp  # noqa: F401
from cdp_plugin.contraction import (
    exact_jacobian,
    hutchinson_frobenius,
    sym_extreme_eigs,
    x0_sym_jacobian_matvec,
)
from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy
from cdp_plugin.samplers import alpha_sigma

RESULTS = Path(__file__).parent / "RESULTS.md"
FIXED = "CDP fd_probe, fixed γ"
MEASURING = "CDP fd_probe + prepass (adaptive γ's measuring step)"
METHODS = {
    "DP (no penalty)": None,
    FIXED: {"contraction_estimator": "fd_probe", "contraction_weight": 0.1},
    MEASURING: {"contraction_adaptive_target": 0.6, "contraction_adaptive_every": 1},
    "CDP hutchinson": {"contraction_estimator": "hutchinson", "contraction_weight": 0.1},
    "CDP hinge lanczos": {"contraction_loss": "hinge", "contraction_estimator": "lanczos"},
    "CDP hinge fd_ritz (one-sided, fused)": {"contraction_loss": "hinge", "contraction_estimator": "fd_ritz"},
    "official full Jacobian": {
        "contraction_estimator": "exact",
        "contraction_weight": 0.1,
        "contraction_batch_fraction": 1.0,
    },
}
# The shipped default (adaptive gamma) is the fixed probe on 9 of 10 steps and the measuring step on the 10th:
# its amortised cost is derived from those two rows (a median over steps would hide the 10th).
DEFAULT = "CDP default: adaptive γ (fd_probe, prepass every 10th step; derived)"


def features(action_dim: int, state_dim: int = 8, env_dim: int = 16):
    return {
        "input_features": {
            "observation.state": PolicyFeature(FeatureType.STATE, (state_dim,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (env_dim,)),
        },
        "output_features": {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
    }


def build(method: dict | None, action_dim: int, arch: dict, device: str):
    torch.manual_seed(0)
    common = dict(
        device=device,
        horizon=16,
        n_action_steps=8,
        prediction_type="sample",
        push_to_hub=False,
        **arch,
        **features(action_dim),
    )
    if method is None:
        policy = DiffusionPolicy(DiffusionConfig(**common))
    else:
        policy = ContractiveDiffusionPolicy(
            ContractiveDiffusionConfig(**common, contraction_diag_every=0, **method)
        )
    return policy.to(device).train()


def make_batch(B: int, action_dim: int, device: str, state_dim: int = 8, env_dim: int = 16):
    g = torch.Generator().manual_seed(1)
    b = {
        "observation.state": torch.randn(B, 2, state_dim, generator=g),
        "observation.environment_state": torch.randn(B, 2, env_dim, generator=g),
        "action": torch.rand(B, 16, action_dim, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(B, 16, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in b.items()}


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _step(policy, opt, batch):
    loss, _ = policy.forward(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def saved_activation_mb(policy, batch) -> float:
    """Bytes autograd saves for backward in one step (unique storages), incl. double-backward graphs."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = policy.forward(batch)
    loss.backward()
    policy.zero_grad(set_to_none=True)
    return sum(seen.values()) / 2**20


def peak_cuda_mb(policy, batch) -> float:
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    _step(policy, opt, batch)
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(policy, opt, batch)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_interleaved(
    policies: dict, batch, steps: int, warmup: int, device: str, slow: set
) -> dict[str, float]:
    """Median step time of every method, measured round-robin so machine noise hits all alike."""
    opts = {k: torch.optim.AdamW(p.parameters(), lr=1e-4) for k, p in policies.items()}
    times: dict[str, list[float]] = {k: [] for k in policies}
    oom: set[str] = set()
    for i in range(warmup + steps):
        for k, p in policies.items():
            if k in oom or (k in slow and i >= warmup + 2):
                continue
            _sync(device)
            t0 = time.perf_counter()
            try:
                _step(p, opts[k], batch)
            except torch.OutOfMemoryError:  # the official construction at large D on an 80 GB card
                oom.add(k)
                opts[k].zero_grad(set_to_none=True)
                free_cuda(device)
                continue
            _sync(device)
            if i >= warmup or (k in slow and i >= 1):
                times[k].append(time.perf_counter() - t0)
    return {k: (None if k in oom else statistics.median(v)) for k, v in times.items()}


def free_cuda(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def accuracy(action_dim: int, arch: dict, device: str, n: int = 4) -> dict[str, float]:
    """Estimator errors vs the exact Jacobian of the (initialised) CDP UNet on n samples."""
    policy = build({}, action_dim, arch, device)
    model = policy.diffusion
    batch = make_batch(n, action_dim, device)
    cond = model._prepare_global_conditioning(batch).detach()
    t = torch.tensor([5, 30, 60, 90][:n], device=device).repeat(n)[:n]
    x = model.noise_scheduler.add_noise(batch["action"], torch.randn_like(batch["action"]), t)
    a, s = alpha_sigma(model.noise_scheduler, t)
    fn = lambda z: model.unet(z, t, global_cond=cond)
    J = exact_jacobian(fn, x, create_graph=False)
    S = 0.5 * (J + J.transpose(1, 2))
    ev = torch.linalg.eigvalsh(S.double())
    spread = (ev[:, -1] - ev[:, 0]).clamp_min(1e-12)
    lmin, lmax = sym_extreme_eigs(fn, x, num_iters=8, alpha=a, sigma=s, prediction_type="sample")
    _, lmax16 = sym_extreme_eigs(fn, x, num_iters=16, alpha=a, sigma=s, prediction_type="sample")
    D = J.shape[1]
    beta = 0.1
    eye = torch.eye(D, device=device, dtype=J.dtype)
    fro_sym = (S + beta * eye).pow(2).flatten(1).sum(1)
    fro_full = (J + beta * eye).pow(2).flatten(1).sum(1)
    mv = x0_sym_jacobian_matvec(fn, x, a, s, "sample")
    hut = torch.stack([hutchinson_frobenius(mv, x, beta, 1, create_graph=False) for _ in range(64)]).mean(0)
    probes = torch.randint(0, 2, (64, *x.shape), device=device).float() * 2 - 1
    fd = torch.stack(
        [((J @ v.flatten(1)[..., None]).squeeze(-1) + beta * v.flatten(1)).pow(2).sum(1) for v in probes]
    ).mean(0)
    return {
        "lanczos_lmax_err_pct_spread": (100 * (lmax.double() - ev[:, -1]).abs() / spread).max().item(),
        "lanczos_lmin_err_pct_spread": (100 * (lmin.double() - ev[:, 0]).abs() / spread).max().item(),
        "lanczos_lmax_rel_err_pct": (
            100 * (lmax.double() - ev[:, -1]).abs() / ev[:, -1].abs().clamp_min(1e-12)
        )
        .max()
        .item(),
        "lanczos16_lmax_rel_err_pct": (
            100 * (lmax16.double() - ev[:, -1]).abs() / ev[:, -1].abs().clamp_min(1e-12)
        )
        .max()
        .item(),
        "hutchinson64_rel_err_pct": (100 * (hut - fro_sym).abs() / fro_sym).max().item(),
        "probe64_rel_err_pct": (100 * (fd - fro_full).abs() / fro_full).max().item(),
    }


def write_section(text: str, name: str = "cost") -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{start}\n{text}\n{end}"
    if start in old:
        new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, old, flags=re.DOTALL)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(new)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--full", action="store_true", help="LeRobot's default UNet (512/1024/2048); meant for a GPU"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dims", default="2,7,14", help="action dims (D = 16 * action_dim)")
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument(
        "--official-dims",
        default=None,
        help="D values at which the official full-Jacobian construction is timed, e.g. 32 (default: every D)",
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--no-write",)]
    cli_args = "".join(f" {a}" for a in shown)
    arch = {} if args.full else {"down_dims": (64, 128), "diffusion_step_embed_dim": 64}
    B = args.batch_size or (64 if args.full or args.device != "cpu" else 32)
    steps = args.steps or (8 if args.device != "cpu" else 5)
    card = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    )
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    official_dims = (
        {int(d) for d in args.official_dims.split(",")}
        if args.official_dims
        else {16 * int(d) for d in args.dims.split(",")}
    )
    for adim in (int(d) for d in args.dims.split(",")):
        D = 16 * adim
        batch = make_batch(B, adim, args.device)
        policies = {
            name: build(method, adim, arch, args.device)
            for name, method in METHODS.items()
            if not (name.startswith("official") and (args.skip_official or D not in official_dims))
        }
        slow = {name for name in policies if name.startswith("official")}
        times = time_interleaved(policies, batch, steps, 2, args.device, slow)
        res = {}
        for name, policy in policies.items():
            if times[name] is None:
                res[name] = (None, None)
                print(f"D={D:4d} {name:26s} out of memory", flush=True)
                continue
            if args.device.startswith("cuda"):
                try:
                    mem = peak_cuda_mb(policy, batch)
                except torch.OutOfMemoryError:
                    free_cuda(args.device)
                    mem = float("nan")
            else:  # model state (params, grads, 2 AdamW moments, float32) + what autograd saves in one step
                mem = 16 * sum(p.numel() for p in policy.parameters()) / 2**20 + saved_activation_mb(
                    policy, batch
                )
            res[name] = (times[name], mem)
            print(f"D={D:4d} {name:26s} {1000 * times[name]:9.1f} ms  mem {mem:8.1f} MB", flush=True)
        del policies
        free_cuda(args.device)
        acc = accuracy(adim, arch, args.device)
        dp_t, dp_m = res["DP (no penalty)"]
        for name, (t, m) in res.items():
            if t is None:
                rows.append((D, name, None, None, None, None))
            else:
                rows.append((D, name, t, t / dp_t, m, m / max(dp_m, 1e-9)))
        (tf, mf), (tm, mm) = res[FIXED], res[MEASURING]
        if tf is not None and tm is not None:
            t, m = 0.9 * tf + 0.1 * tm, max(mf, mm)
            rows.append((D, DEFAULT, t, t / dp_t, m, m / max(dp_m, 1e-9)))
        rows.append((D, "accuracy", acc))
        print(f"D={D:4d} accuracy vs exact Jacobian: {acc}", flush=True)

    lines = [
        f"Train-step cost of the contraction penalty — `python benchmarks/contraction_cost.py{cli_args}`,",
        (
            f"{card}, {datetime.date.today().isoformat()}, torch {torch.__version__}, batch {B}, horizon 16,"
            f" UNet down_dims {arch.get('down_dims', (512, 1024, 2048))}, x0 prediction, median of {steps} steps."
        ),
        "Ratios are to DP measured in the same run, steps interleaved round-robin. Memory: "
        + (
            "peak CUDA memory allocated during one step, above the resting model"
            if args.device != "cpu"
            else "model state (parameters, gradients, AdamW moments) plus the tensors autograd saves for backward in"
            " one step (activations, incl. double-backward graphs); the allocator's caching is not counted"
        )
        + ".",
        "",
        "| D | method | step (ms) | time / DP | memory (MB) | mem / DP |",
        "|---|---|---|---|---|---|",
    ]
    acc_lines = [
        "",
        "Estimator accuracy vs the exact Jacobian (same network and batch, 4 noise levels, worst sample):",
        "",
        "| D | Lanczos k=8 lambda_max err (% of spread) | lambda_min err (% of spread) | lambda_max rel. err (%) | k=16 lambda_max rel. err (%) | Hutchinson 64 probes rel. err (%) | fd probe 64 probes rel. err (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r[1] == "accuracy":
            a = r[2]
            acc_lines.append(
                f"| {r[0]} | {a['lanczos_lmax_err_pct_spread']:.2f} | {a['lanczos_lmin_err_pct_spread']:.2f} | "
                f"{a['lanczos_lmax_rel_err_pct']:.2f} | {a['lanczos16_lmax_rel_err_pct']:.2f} | {a['hutchinson64_rel_err_pct']:.1f} | {a['probe64_rel_err_pct']:.1f} |"
            )
        else:
            D, name, t, tr, m, mr = r
            if t is None:
                lines.append(f"| {D} | {name} | out of memory | – | > card | – |")
                continue
            lines.append(f"| {D} | {name} | {1000 * t:.1f} | {tr:.2f}x | {m:.0f} | {mr:.2f}x |")
    text = "\n".join(lines + acc_lines)
    print("\n" + text)
    if not args.no_write:
        write_section(text, "cost-full" if args.full else "cost")
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
