"""The share that steers the adaptive gamma, at every saved checkpoint of a run: how to pick a target.

    python benchmarks/adaptive_share.py --matrix outputs/pusht_cpu8k --task pusht --policies dp_x0 \\
        --target 0.6 --results benchmarks/RESULTS.md

With ``--policy.contraction_adaptive_target=v*`` gamma is the multiplier of "share v of penalised training
samples outside their step's contraction window <= v*" (``cdp_plugin.contraction.dual_ascent_weight``); the
Frobenius ``fd_probe`` penalty measures v with its ``fd_ritz`` Krylov prepass (the worst Ritz value of
sym J_x0 per sample). This script measures that same v on the checkpoints of a finished run, most usefully
the no-penalty x0 control (``contraction_loss=none``): while a run with the adaptive weight follows the
control's trajectory (gamma 0), gamma rises only if v exceeds v*, so a control whose v stays below v* at
every checkpoint says the adaptive policy trains the control's network there (up to the random stream), and
one whose v exceeds it says where gamma will act.

For each finished cell of the named policies and each ``train/checkpoints/<step>``, it draws ``--batches``
batches of ``--batch-size`` training windows of the cell's own dataset (fixed noise and timesteps, every row
penalised) and runs the checkpoint's policy in training mode with its contraction config switched to the
adaptive Frobenius penalty at ``--target`` (everything else, e.g. the deployed grid's per-step windows, is the
checkpoint's); the share is LeRobot's logged ``contraction_ritz_violation_frac``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cdp_plugin.bench.probe import ProbeSettings, load_policy, observation_batch
from cdp_plugin.bench.results_file import replace_section
from cdp_plugin.policy.modeling_cdp import NOISE_KEY, TIMESTEPS_KEY

sys.path.insert(0, str(Path(__file__).parent))
from gradient_share import cell_info, checkpoints  # noqa: E402

TAG = "bench:adaptive-share"


def steering_share(ckpt: Path, dataset_root: Path, target: float, batches: int, batch_size: int) -> float:
    """Mean share of training rows outside their step's window, as the adaptive Frobenius penalty measures it
    (its prepass), on ``batches`` batches of the dataset with fixed noise and timesteps."""
    policy, pre, cfg = load_policy(ckpt, ProbeSettings())
    policy.train()
    model = policy.diffusion
    model.contraction = dataclasses.replace(
        model.contraction,
        loss="frobenius",
        estimator="fd_probe",
        weight=0.0,
        adaptive_target=target,
        batch_fraction=1.0,
        every=1,
        adaptive_every=1,
    )
    if not hasattr(model, "contraction_weight"):  # a checkpoint trained without the adaptive weight
        model.register_buffer("contraction_weight", torch.tensor(0.0))
    data = observation_batch(dataset_root, cfg, pre, batches * batch_size)
    data = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    gen = torch.Generator().manual_seed(0)
    T = model.noise_scheduler.config.num_train_timesteps
    shares = []
    for b in range(batches):
        batch = {k: v[b * batch_size : (b + 1) * batch_size] for k, v in data.items()}
        batch[NOISE_KEY] = torch.randn(batch["action"].shape, generator=gen)
        batch[TIMESTEPS_KEY] = torch.randint(0, T, (batch["action"].shape[0],), generator=gen)
        model._train_step = 0
        _, info = policy.forward(batch)  # training mode with grad: the penalty (and its prepass) runs
        shares.append(info["contraction_ritz_violation_frac"])
    return statistics.fmean(shares)


def markdown(rows: list[dict], target: float, argv: str, wall_s: float) -> str:
    """One table per task (its checkpoints as columns), a row per cell."""
    lines = [
        "## The share that steers the adaptive gamma, per checkpoint (`benchmarks/adaptive_share.py`)",
        "",
        f"- Command: `python benchmarks/adaptive_share.py {argv}` ({wall_s / 60:.1f} min, CPU, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "- share v = training rows whose worst Ritz value of sym J_x0 (the adaptive Frobenius penalty's "
        "prepass) lies outside their step's contraction window, on the run's own data; gamma can rise from 0 "
        f"only where v > v* = {target:g}.",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        group = [r for r in rows if r["task"] == task]
        steps = sorted({s for r in group for s in r["shares"]})
        lines += [
            "",
            "| task | data | policy | seed | "
            + " | ".join(f"step {s}" for s in steps)
            + f" | max | max < {target:g} |",
            "|---|---|---|---|" + "---|" * len(steps) + "---|---|",
        ]
        for r in group:
            vals = [f"{r['shares'][s]:.3f}" if s in r["shares"] else "–" for s in steps]
            top = max(r["shares"].values())
            lines.append(
                f"| {r['task']} | {round(100 * r['fraction'])} % | {r['policy']} | {r['seed']} | "
                + " | ".join(vals)
                + f" | {top:.3f} | {'yes' if top < target else '**no**'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--matrix", type=Path, action="append", required=True, help="cdp-bench / pusht_study --out"
    )
    p.add_argument("--task", action="append", default=None, help="the task of each --matrix (pointmaze)")
    p.add_argument("--policies", required=True, help="comma-separated policy / variant names")
    p.add_argument("--target", type=float, required=True, help="the adaptive target v* to compare with")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--results", type=Path, default=None, help="RESULTS.md to write the section into")
    p.add_argument("--section", default=TAG, help=f"RESULTS.md section (default {TAG})")
    a = p.parse_args(argv)
    tasks = a.task or ["pointmaze"]
    if len(tasks) != len(a.matrix):
        raise SystemExit(f"adaptive_share: {len(a.matrix)} --matrix but {len(tasks)} --task; give one each")
    if not 0 <= a.target < 1:
        raise SystemExit(f"adaptive_share: --target must be in [0, 1), got {a.target}")
    t0 = time.time()
    torch.set_num_threads(1)
    rows = []
    for matrix, task in zip(a.matrix, tasks, strict=True):
        for policy in a.policies.split(","):
            for path in sorted((matrix / "cells").glob(f"{task}__{policy}__f*__s*.json")):
                cell = json.loads(path.read_text())
                fraction, seed, dataset = cell_info(cell, matrix)
                shares = {}
                for step, ckpt in checkpoints(matrix / "runs" / cell["id"] / "train"):
                    shares[step] = steering_share(ckpt, dataset, a.target, a.batches, a.batch_size)
                    print(f"{cell['id']}: step {step}, share {shares[step]:.3f}", flush=True)
                rows.append(
                    {"task": task, "fraction": fraction, "policy": policy, "seed": seed, "shares": shares}
                )
    if not rows:
        raise SystemExit(f"no finished cells of {a.policies} under {', '.join(map(str, a.matrix))}")
    md = markdown(rows, a.target, " ".join(sys.argv[1:] if argv is None else argv), time.time() - t0)
    print(md)
    if a.results:
        replace_section(a.results, a.section, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
