"""How much of the training gradient the contraction penalty is, at mid-training.

    python benchmarks/gradient_share.py --matrix outputs/study13 --task pointmaze \\
        --matrix outputs/pusht_cpu4k --task pusht \\
        --policies cdp_g0.1_all,cdp_g1_all,cdp_hinge_g1_all,g0.1 --results benchmarks/RESULTS.md

``--matrix`` / ``--task`` come in pairs (a ``cdp-bench --out`` directory or a ``benchmarks/pusht_study.py
--out`` directory, whose task is ``pusht``); policies a directory does not hold are skipped. For every
finished cell of the named policies it loads the checkpoint nearest to half of the
training steps (``train/checkpoints/<step>``, the one at or after the middle) and, on ``--batches`` batches of
``--batch-size`` training windows of the cell's own dataset (fixed noise and timesteps per batch), splits
the gradient of LeRobot's training loss on the UNet parameters into

    g_diff = grad L_diffusion,        g_pen = grad (gamma * P)   (P: the configured penalty, gamma its weight)

(``g_pen`` = grad of the total loss minus ``g_diff`` on the same noise, timesteps and probes). It reports the
share ``|g_pen| / |g_diff|`` and the cosine between them (median and range over batches and seeds). The
column "paper /D^2 at 0.1" is the share the paper's default (gamma 0.1 with the ``/D^2`` mean) would have on
the same weights, ``0.1 / gamma * share / D`` for a per-dimension Frobenius cell (it is the same penalty up
to that factor). Issue 13 measured 0.07-0.7 % for the latter during training at D = 32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cdp_plugin.bench.probe import ProbeSettings, load_policy, observation_batch
from cdp_plugin.bench.results_file import replace_section
from cdp_plugin.policy.modeling_cdp import NOISE_KEY, TIMESTEPS_KEY

TAG = "bench:gradient-share"
ACTS = (
    1e-3  # a batch in which the penalty's gradient is at least 0.1 % of the diffusion loss's: it acts there
)


def checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """``[(step, pretrained_model)]`` of every saved checkpoint of a LeRobot run, in step order."""
    out = sorted(
        (int(p.name), p / "pretrained_model")
        for p in (train_dir / "checkpoints").glob("[0-9]*")
        if (p / "pretrained_model" / "model.safetensors").is_file()
    )
    if not out:
        raise FileNotFoundError(f"no checkpoints under {train_dir / 'checkpoints'}")
    return out


def mid_checkpoint(train_dir: Path) -> tuple[int, Path]:
    """``(step, pretrained_model)`` of the first saved checkpoint at or after half of the last one."""
    saved = checkpoints(train_dir)
    return next((s, p) for s, p in saved if s >= saved[-1][0] / 2)


def cell_info(cell: dict, matrix: Path) -> tuple[float, int, Path]:
    """``(fraction, seed, dataset root)`` of a ``cdp-bench`` cell or of a ``pusht_study.py`` cell."""
    if "cell" in cell:  # cdp-bench
        return cell["cell"]["fraction"], cell["cell"]["seed"], Path(cell["dataset"])
    return cell["fraction"], cell["seed"], matrix / "data" / "pusht_keypoints"  # pusht_study.dataset_root


def _grad(policy, batch: dict, weight: float) -> torch.Tensor:
    """Flat gradient of the training loss on the UNet with the penalty weight set to ``weight``."""
    model = policy.diffusion
    saved = model.current_weight()  # an adaptive gamma lives in a buffer, which each training step moves

    def set_weight(w: float) -> None:
        if model.contraction.adaptive:
            model.contraction_weight.fill_(w)
        else:
            model.contraction.weight = w

    set_weight(weight)
    try:
        policy.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # same penalised rows and probes for every call
        loss, _ = policy.forward(batch)
        loss.backward()
    finally:
        set_weight(saved)
    return torch.cat([p.grad.flatten() for p in model.unet.parameters() if p.grad is not None])


def gradient_share(ckpt: Path, dataset_root: Path, batches: int, batch_size: int, seed: int = 0) -> dict:
    """Share and cosine of the penalty's gradient against the diffusion loss's, per batch."""
    policy, pre, cfg = load_policy(ckpt, ProbeSettings())
    policy.train()
    ccfg = policy.diffusion.contraction
    data = observation_batch(dataset_root, cfg, pre, batches * batch_size)
    data = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    gen = torch.Generator().manual_seed(seed)
    T = policy.diffusion.noise_scheduler.config.num_train_timesteps
    perm = torch.randperm(batches * batch_size, generator=gen)
    shares, cosines = [], []
    for b in range(batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        batch = {k: v[idx] for k, v in data.items()}
        act = batch["action"]
        batch[NOISE_KEY] = torch.randn(act.shape, generator=gen)
        batch[TIMESTEPS_KEY] = torch.randint(0, T, (act.shape[0],), generator=gen)
        g_diff = _grad(policy, batch, 0.0)
        g_pen = _grad(policy, batch, policy.diffusion.current_weight()) - g_diff
        shares.append((g_pen.norm() / g_diff.norm()).item())
        cosines.append(torch.nn.functional.cosine_similarity(g_pen, g_diff, dim=0).item())
    D = cfg.horizon * cfg.action_feature.shape[0]
    return {
        "gamma": policy.diffusion.current_weight(),  # the adaptive gamma reached at this checkpoint
        "adaptive": ccfg.adaptive,
        "loss": ccfg.loss,
        "normalization": ccfg.normalization,
        "D": D,
        "shares": shares,
        "cosines": cosines,
    }


def _fmt(xs: list[float], pct: bool = True) -> str:
    f = (lambda x: f"{100 * x:.2g} %") if pct else (lambda x: f"{x:+.2f}")
    return f"{f(statistics.median(xs))} ({f(min(xs))} – {f(max(xs))})"


def markdown(rows: list[dict], argv: str, wall_s: float) -> str:
    lines = [
        "## Penalty gradient share at mid-training (`benchmarks/gradient_share.py`)",
        "",
        f"- Command: `python benchmarks/gradient_share.py {argv}` ({wall_s / 60:.1f} min, CPU, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "- share = |∇θ(γ·P)| / |∇θ L_diffusion| on the UNet parameters, at the checkpoint at or after half of "
        "training, same noise / timesteps / probes; median (range) over batches and seeds. "
        "'paper /D² at 0.1' = the share the paper's default (γ 0.1, `/D²` mean) has on the same weights "
        "(per-dimension Frobenius cells: 0.1/γ · share / D). 'acts in' = batches whose share is at least "
        f"{100 * ACTS:g} % (a one-sided hinge acts in few batches, the Frobenius penalty in every one).",
        "",
        "| task | data | policy | loss | γ | D | step | seeds | share | cos(∇P, ∇L) | paper /D² at 0.1 | acts in |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper, gamma = "–", f"{r['gamma']:g}"
        if r.get("adaptive"):  # each seed's gamma is where its dual variable stood at this checkpoint
            gamma = "adaptive: " + " / ".join(f"{g:.2g}" for g in r["gammas"])
        elif r["loss"] == "frobenius" and r["normalization"] == "per_dim":
            paper = _fmt([0.1 / r["gamma"] * s / r["D"] for s in r["shares"]])
        lines.append(
            f"| {r['task']} | {round(100 * r['fraction'])} % | {r['policy']} | {r['loss']} | {gamma} | {r['D']} | {r['step']} | "
            f"{r['seeds']} | {_fmt(r['shares'])} | {_fmt(r['cosines'], pct=False)} | {paper} | "
            f"{sum(s >= ACTS for s in r['shares'])}/{len(r['shares'])} batches |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--matrix",
        type=Path,
        action="append",
        required=True,
        help="a cdp-bench or pusht_study.py --out directory (repeatable, one --task each)",
    )
    p.add_argument("--task", action="append", default=None, help="the task of each --matrix (pointmaze)")
    p.add_argument("--policies", required=True, help="comma-separated cdp-bench policy / variant names")
    p.add_argument(
        "--fraction",
        type=float,
        default=None,
        help="only cells of this data fraction (default: every fraction, one row each)",
    )
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--results", type=Path, default=None, help="RESULTS.md to write the section into")
    p.add_argument("--section", default=TAG, help=f"RESULTS.md section (default {TAG}; e.g. a second table)")
    a = p.parse_args(argv)
    tasks = a.task or ["pointmaze"]
    if len(tasks) != len(a.matrix):
        raise SystemExit(
            f"gradient_share: {len(a.matrix)} --matrix but {len(tasks)} --task; give one task each"
        )
    t0 = time.time()
    torch.set_num_threads(1)
    rows = []
    for matrix, task in zip(a.matrix, tasks, strict=True):
        for policy in a.policies.split(","):
            groups: dict[float, dict] = {}  # one row per data fraction
            for path in sorted((matrix / "cells").glob(f"{task}__{policy}__f*__s*.json")):
                cell = json.loads(path.read_text())
                fraction, seed, dataset = cell_info(cell, matrix)
                if a.fraction is not None and abs(fraction - a.fraction) > 1e-9:
                    continue
                step, ckpt = mid_checkpoint(matrix / "runs" / cell["id"] / "train")
                r = gradient_share(ckpt, dataset, a.batches, a.batch_size)
                per = groups.setdefault(fraction, {"shares": [], "cosines": [], "seeds": [], "gammas": []})
                per["shares"] += r["shares"]
                per["cosines"] += r["cosines"]
                per["seeds"].append(seed)
                per["gammas"].append(r["gamma"])
                per.update({k: r[k] for k in ("gamma", "adaptive", "loss", "normalization", "D")}, step=step)
                print(f"{cell['id']}: step {step}, share {_fmt(r['shares'])}", flush=True)
            for fraction, per in sorted(groups.items(), key=lambda kv: -kv[0]):
                rows.append(
                    {"task": task, "policy": policy, "fraction": fraction, **per, "seeds": len(per["seeds"])}
                )
    if not rows:
        raise SystemExit(
            f"no finished cells of {a.policies} under {', '.join(str(m / 'cells') for m in a.matrix)}"
        )
    md = markdown(rows, " ".join(sys.argv[1:] if argv is None else argv), time.time() - t0)
    print(md)
    if a.results:
        replace_section(a.results, a.section, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
