"""Aggregate finished cells into tables (``benchmarks/RESULTS.md``, the ``bench:matrix`` section) and PNG plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from cdp_plugin.bench.matrix import POLICY_LABELS, TASKS
from cdp_plugin.bench.metrics import wilson_interval

MATRIX_TAG = "bench:matrix"
TOY_TAG = "bench:toy"
COLORS = {"dp": "tab:gray", "cdp_frobenius": "tab:blue", "cdp_hinge": "tab:orange", "dp_x0": "tab:green"}

# Paper numbers quoted beside ours (paper.md section 5; read off charts, +-2 units). None of them uses our data.
PAPER_NOTES = {
    "lift": (
        "Paper, Robomimic-Limited (10 % of the data, *average cumulative episode reward*, read off the chart): "
        "Lift-L DP-UNet 246 vs CDP 284 (+15 %); Lift-H DP 255 vs CDP 280. Not comparable to our numbers: "
        "Robomimic human demos, 7-D delta actions with single-step (no chunk) MLP/DiT policies, hundreds of "
        "thousands of gradient steps; here a scripted expert, a tiny UNet and a few hundred steps on CPU."
    ),
    "pointmaze": (
        "Paper: no PointMaze result. Closest: D4RL-Limited Antmaze-M (10 % data, normalized return) EDP 26 vs "
        "CDP 48 and DQL 43 — offline RL with a Q-function, not imitation; not comparable."
    ),
    "can": "Paper, Table 2 (Robomimic Can-H, full data, success): DP-UNet 0.95 vs CDP-UNet 1.00; "
           "Robomimic-Limited Can-L reward DP 130 vs CDP 133.",
}


def replace_section(path: Path, tag: str, body: str, header: str = "# Benchmarks: DP vs CDP\n") -> None:
    """Write ``body`` between ``<!-- tag -->`` and ``<!-- /tag -->`` in ``path``, keeping everything else."""
    path = Path(path)
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.is_file() else header
    if start in text and end in text:
        pre = text[: text.index(start)]
        post = text[text.index(end) + len(end):]
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def aggregate(cells: list[dict]) -> dict[tuple, dict]:
    """Per (task, policy, fraction): success pooled over episodes and seeds with a Wilson interval, per-seed
    numbers, and the seed means of the other metrics."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        k = (c["cell"]["task"], c["cell"]["policy"], c["cell"]["fraction"])
        groups[k].append(c)
    dp_update = {(c["cell"]["task"], c["cell"]["fraction"], c["cell"]["seed"]): c.get("update_s")
                 for c in cells if c["cell"]["policy"] == "dp"}
    agg = {}
    for k, cs in sorted(groups.items()):
        cs = sorted(cs, key=lambda c: c["cell"]["seed"])
        succ = [s for c in cs for s in c["eval"]["successes"]]
        n, s = len(succ), sum(succ)
        lo, hi = wilson_interval(s, n)
        ratios = []
        for c in cs:
            d = dp_update.get((k[0], k[2], c["cell"]["seed"]))
            if d and c.get("update_s"):
                ratios.append(c["update_s"] / d)
        prof = [c["probe"]["lambda_profile"] for c in cs]
        viol = [r["violation_frac"] for p in prof for r in p]
        agg[k] = {
            "seeds": [c["cell"]["seed"] for c in cs],
            "success": s / n if n else float("nan"), "ci": (lo, hi), "n_episodes": n, "n_success": s,
            "success_per_seed": [statistics.fmean(c["eval"]["successes"]) for c in cs],
            "reward": _mean([c["eval"]["avg_sum_reward"] for c in cs]),
            "reward_per_seed": [c["eval"]["avg_sum_reward"] for c in cs],
            "action_var": _mean([c["probe"]["action_var"]["mean"] for c in cs]),
            "action_var_per_seed": [c["probe"]["action_var"]["mean"] for c in cs],
            "sep_median": _mean([c["probe"]["sep_ratio"]["median"] for c in cs]),
            "sep_per_seed": [c["probe"]["sep_ratio"]["median"] for c in cs],
            "viol": _mean(viol),
            "lambda_low_noise": _mean([p[0]["lambda_max_mean"] for p in prof]),
            "time_ratio": _mean(ratios),
            "update_s": _mean([c.get("update_s") for c in cs]),
            "latency_ms": _mean([c["probe"]["latency_ms"] for c in cs]),
            "final_loss": _mean([c.get("final_loss") for c in cs]),
            "cells": cs,
        }
    return agg


def _fmt(x, spec=".3f", none="–"):
    return none if x is None else format(x, spec)


def _seeds(xs, spec):
    return "/".join(format(x, spec) for x in xs)


def verdict(agg: dict, task: str, fraction: float) -> str:
    """Plain win / tie / loss of each CDP variant vs DP on success (CI overlap = tie) and reward."""
    out = []
    for pol, base in (("cdp_frobenius", "dp"), ("cdp_hinge", "dp"), ("cdp_frobenius", "dp_x0"), ("cdp_hinge", "dp_x0")):
        a, dp = agg.get((task, pol, fraction)), agg.get((task, base, fraction))
        if a is None or dp is None:
            continue
        if a["ci"][0] > dp["ci"][1]:
            word = "wins"
        elif a["ci"][1] < dp["ci"][0]:
            word = "loses"
        else:
            word = "ties (95 % intervals overlap)"
        diff = 100 * (a["success"] - dp["success"])
        out.append(f"{POLICY_LABELS[pol]} vs {POLICY_LABELS[base]}: {word} on success ({diff:+.0f} points; reward "
                   f"{_fmt(a['reward'], '.2f')} vs {_fmt(dp['reward'], '.2f')}; action variance "
                   f"{_fmt(a['action_var'], '.3g')} vs {_fmt(dp['action_var'], '.3g')}; separation ratio "
                   f"{_fmt(a['sep_median'], '.3g')} vs {_fmt(dp['sep_median'], '.3g')})")
    if not out:
        return ""
    return f"- {int(fraction * 100)} % data: " + "; ".join(out) + "."


def summary_lines(agg: dict) -> list[str]:
    """Counts over all (task, fraction) pairs: success wins / ties / losses, and the paper's other claims."""
    out = ["### Summary over all tasks and data fractions", ""]
    for pol, base in (("cdp_frobenius", "dp"), ("cdp_hinge", "dp"), ("cdp_frobenius", "dp_x0"), ("cdp_hinge", "dp_x0")):
        pairs = [(k, agg[(k[0], base, k[2])]) for k in agg if k[1] == pol and (k[0], base, k[2]) in agg]
        if not pairs:
            continue
        w = sum(agg[k]["ci"][0] > b["ci"][1] for k, b in pairs)
        lo = sum(agg[k]["ci"][1] < b["ci"][0] for k, b in pairs)
        higher = sum(agg[k]["success"] > b["success"] for k, b in pairs)
        lower = sum(agg[k]["success"] < b["success"] for k, b in pairs)
        var = sum((agg[k]["action_var"] or 0) < (b["action_var"] or 0) for k, b in pairs)
        sep = sum((agg[k]["sep_median"] or 0) < (b["sep_median"] or 0) for k, b in pairs)
        tr = [agg[k]["time_ratio"] for k, _ in pairs if agg[k]["time_ratio"] is not None]
        ratio = "" if base != "dp" or not tr else f"; train step time {min(tr):.2f}–{max(tr):.2f}× DP"
        out.append(
            f"- {POLICY_LABELS[pol]} vs {POLICY_LABELS[base]} ({len(pairs)} task × fraction pairs): success wins {w}, "
            f"ties {len(pairs) - w - lo}, losses {lo} (point estimate higher in {higher}, lower in {lower}); lower "
            f"action variance in {var}/{len(pairs)}; lower separation ratio in {sep}/{len(pairs)}{ratio}."
        )
    out.append("")
    return out


def matrix_markdown(agg: dict, profile: dict, meta: dict, skipped: dict[str, str], failed: list[str]) -> str:
    lines = [
        "## Matrix: DP vs CDP-frobenius vs CDP-hinge, with the DP-x0 control where run (LeRobot train/eval)",
        "",
        f"- Command(s), in order, all into one matrix directory: {meta.get('commands_md') or '`' + meta['command'] + '`'}",
        f"- Card: {meta['card']}",
        f"- Date: {meta['date']}; total wall time {meta.get('wall', '?')}",
        f"- Profile `{profile['name']}`: {profile['steps']} training steps, batch {profile['batch_size']}, "
        f"UNet down_dims {profile['down_dims']}, lr {profile['lr']} (no warm-up), horizon {profile['horizon']}, "
        f"n_action_steps {profile['n_action_steps']}; seeds {profile['seeds']}; data fractions "
        f"{[int(f * 100) for f in profile['fractions']]} % (random *episode* subsets, seed 42+seed, same subset for "
        "every policy); expert datasets from `cdp_plugin.data.generate` "
        f"({', '.join(f'{k} {v} episodes' for k, v in profile['dataset_episodes'].items() if k in profile['tasks'])}).",
        f"- Every policy is evaluated with the same deterministic sampler: DDIM (eta = 0), "
        f"{profile['num_inference_steps']} steps (`diffusion` has only DDPM/DDIM; cdp's default is DPM-Solver++). "
        "DP is LeRobot's `diffusion` with its defaults (epsilon prediction); CDP is `cdp` (x0 prediction, "
        "penalty weight 0.1, margin 0.1). DP-x0, where present, is `cdp` with `--policy.contraction_loss=none`: the "
        "x0 parameterisation without the penalty, which separates the penalty's effect from the parameterisation's.",
        "- Columns: success pooled over all evaluation episodes and seeds, with a 95 % Wilson interval (per-seed "
        "rates after it); mean episode reward (sum of env rewards per episode; seed mean); action variance = "
        "variance over 16 samples for one observation, mean over action entries and 8 dataset observations, in "
        "normalised action units² ([-1, 1] range); separation ratio = |A(z + δu) − A(z)| / δ, δ = 1e-3, "
        "median over 64 noise seeds (< 1: the sampler contracts); λ-viol = share of (sample, noise level) with "
        "λ_max(sym J_x0) ≥ α_t at the 10 DDIM noise levels (0 = contractive everywhere, Lanczos, 8 steps); "
        "λ_max(t=0) at the lowest noise level; step time = lerobot-train `updt_s` relative to DP (same task, "
        "fraction, seed; on a shared CPU, and across separate invocations, this ratio is noisy); latency = one action chunk for one observation (ms, median of 10, 1 thread).",
        "",
    ]
    tasks = [t for t in profile["tasks"] if any(k[0] == t for k in agg)]
    for task in tasks:
        lines += [f"### {task} (`--env.type={TASKS[task].env_type}`)", "",
                  "| policy | data | success % [95 % CI] (per seed) | reward (per seed) | action var | sep. ratio | "
                  "λ-viol | λ_max(t=0) | step time ×DP | latency ms |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for frac in profile["fractions"]:
            for pol in profile["policies"]:
                a = agg.get((task, pol, frac))
                if a is None:
                    continue
                lines.append(
                    f"| {POLICY_LABELS[pol]} | {int(frac * 100)} % | {100 * a['success']:.0f} "
                    f"[{100 * a['ci'][0]:.0f}, {100 * a['ci'][1]:.0f}] ({_seeds([100 * x for x in a['success_per_seed']], '.0f')}; "
                    f"n={a['n_episodes']}) | {_fmt(a['reward'], '.2f')} ({_seeds(a['reward_per_seed'], '.2f')}) | "
                    f"{_fmt(a['action_var'], '.3g')} | {_fmt(a['sep_median'], '.3g')} | {_fmt(a['viol'], '.2f')} | "
                    f"{_fmt(a['lambda_low_noise'], '.2f')} | {_fmt(a['time_ratio'], '.2f')} | {_fmt(a['latency_ms'], '.1f')} |"
                )
        lines.append("")
        if task in PAPER_NOTES:
            lines += [PAPER_NOTES[task], ""]
        lines.append("Where CDP wins, ties or loses (success; ties when the 95 % intervals overlap):")
        for frac in profile["fractions"]:
            v = verdict(agg, task, frac)
            if v:
                lines.append(v)
        lines.append("")
    lines += summary_lines(agg)
    for t, why in skipped.items():
        lines += [f"### {t}: skipped", "", f"{why}.", ""]
    if failed:
        lines += ["### Failed cells", "", *[f"- `{c}` (see `logs/{c}.error.txt` in the output directory)" for c in failed], ""]
    lines += [
        "Plots: `benchmarks/plots/success_vs_fraction.png`, `action_variance.png`, `separation_ratio.png` "
        "(over training), `lambda_max_vs_noise.png`.",
        "",
        f"Caveats: profile `{profile['name']}` trains for {profile['steps']} steps; with few evaluation episodes per "
        "seed the success intervals are wide, so many differences in success are ties. The sampler-level metrics "
        "(variance, separation ratio, λ) are far less noisy and show what training does to the sampler.",
        "",
        ("Parameterisation: DP is an epsilon network, CDP an x0 network. The DP-x0 rows (same x0 network, no "
         "penalty) show how much of each CDP-vs-DP difference is due to the parameterisation and how much to the "
         "penalty: compare CDP with DP-x0 for the penalty's own effect."
         if any(k[1] == "dp_x0" for k in agg) else
         "Parameterisation: DP is an epsilon network, CDP an x0 network, so CDP-vs-DP differences mix the "
         "penalty's effect with the parameterisation's; add the control with `cdp-bench <profile> --policies dp_x0`."),
    ]
    return "\n".join(lines)


def make_plots(agg: dict, profile: dict, plots_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in profile["tasks"] if any(k[0] == t for k in agg)]
    pols = [p for p in profile["policies"] if any(k[1] == p for k in agg)]
    fracs = sorted(profile["fractions"])
    paths = []
    sub = f"{profile['name']} profile, seeds {profile['seeds']}"

    # 1. success vs data fraction
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 5.5 * len(tasks)), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for j, pol in enumerate(pols):
            xs, ys, lo, hi = [], [], [], []
            for f in fracs:
                a = agg.get((task, pol, f))
                if a is None:
                    continue
                x = 100 * f * (1 + 0.04 * (j - 1))
                xs.append(x)
                ys.append(100 * a["success"])
                lo.append(100 * (a["success"] - a["ci"][0]))
                hi.append(100 * (a["ci"][1] - a["success"]))
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, color=COLORS[pol], label=POLICY_LABELS[pol])
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in fracs], [f"{int(100 * f)} %" for f in fracs])
        ax.set_ylim(-5, 105)
        ax.set_xlabel("training data fraction (% of expert episodes)")
        ax.set_ylabel("success rate (%), 95 % Wilson CI")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(fontsize=10, t=f"Success vs data fraction ({sub})")
    fig.tight_layout()
    paths.append(plots_dir / "success_vs_fraction.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 2. action variance (grouped bars, per-seed dots)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 5.5 * len(tasks)), 4.6), squeeze=False)
    width = 0.8 / max(len(pols), 1)
    for ax, task in zip(axes[0], tasks):
        for j, pol in enumerate(pols):
            for i, f in enumerate(fracs):
                a = agg.get((task, pol, f))
                if a is None:
                    continue
                x = i + (j - (len(pols) - 1) / 2) * width
                ax.bar(x, a["action_var"], width, color=COLORS[pol], label=POLICY_LABELS[pol] if i == 0 else None)
                ax.scatter([x] * len(a["action_var_per_seed"]), a["action_var_per_seed"], color="k", s=10, zorder=3)
        ax.set_xticks(range(len(fracs)), [f"{int(100 * f)} % data" for f in fracs])
        ax.set_yscale("log")
        lo_, hi_ = ax.get_ylim()
        ax.set_ylim(lo_, hi_ * 4)  # room for the legend
        ax.set_ylabel("action variance per observation\n(normalised action units², log)")
        ax.set_title(task)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(fontsize=10, t=f"Per-observation action variance, DDIM-{profile['num_inference_steps']} (bars: seed mean, dots: seeds)")
    fig.tight_layout()
    paths.append(plots_dir / "action_variance.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 3. separation ratio over training
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 5.5 * len(tasks)), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for pol in pols:
            for f in fracs:
                a = agg.get((task, pol, f))
                if a is None:
                    continue
                by_step = defaultdict(list)
                for c in a["cells"]:
                    for r in c["sep_over_training"]:
                        by_step[r["step"]].append(r["median"])
                steps = sorted(by_step)
                ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], marker="o", color=COLORS[pol],
                        linestyle="-" if f >= 1 else "--", label=f"{POLICY_LABELS[pol]}, {int(100 * f)} %")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("separation ratio |ΔA| / |Δz| (median, log)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(fontsize=10, t="Sampler separation ratio over training (< 1: contractive; seed mean)")
    fig.tight_layout()
    paths.append(plots_dir / "separation_ratio.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 4. lambda_max vs noise level
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 5.5 * len(tasks)), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        alpha_line = None
        for pol in pols:
            for f in fracs:
                a = agg.get((task, pol, f))
                if a is None:
                    continue
                by_t = defaultdict(list)
                for c in a["cells"]:
                    for r in c["probe"]["lambda_profile"]:
                        by_t[r["t"]].append(r["lambda_max_mean"])
                        alpha_line = alpha_line or {}
                        alpha_line[r["t"]] = r["alpha"]
                ts = sorted(by_t)
                ax.plot(ts, [statistics.fmean(by_t[t]) for t in ts], marker="o", ms=3, color=COLORS[pol],
                        linestyle="-" if f >= 1 else "--", label=f"{POLICY_LABELS[pol]}, {int(100 * f)} %")
        if alpha_line:
            ts = sorted(alpha_line)
            ax.plot(ts, [alpha_line[t] for t in ts], color="k", lw=1.5, ls=":", label="α_t (contraction threshold)")
        ys = [v for ln in ax.get_lines() for v in ln.get_ydata()]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
            scale = "log"
        else:
            ax.set_yscale("symlog", linthresh=0.1)
            scale = "symlog"
        if ys:
            lo_, hi_ = min(ys), max(ys)
            ticks = [t for t in (-10, -5, -2, -1, -0.5, -0.2, 0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20, 50, 100)
                     if lo_ * (0.9 if lo_ > 0 else 1.1) <= t <= hi_ * 1.1 and (scale == "symlog" or t > 0)]
            ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("noise level: training timestep t (of 100; DDIM-10 grid)")
        ax.set_ylabel(f"λ_max(sym J_x0) (dimensionless, {scale})")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(fontsize=10, t="λ_max(sym J_x0) vs noise level (sampler contracts where λ_max < α_t)")
    fig.tight_layout()
    paths.append(plots_dir / "lambda_max_vs_noise.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def compact_table(agg: dict) -> str:
    rows = ["task | policy | data | success % [CI] | reward | act.var | sep | step×DP"]
    for (task, pol, frac), a in sorted(agg.items()):
        rows.append(f"{task} | {pol} | {int(frac * 100)}% | {100 * a['success']:.0f} [{100 * a['ci'][0]:.0f},"
                    f"{100 * a['ci'][1]:.0f}] | {_fmt(a['reward'], '.2f')} | {_fmt(a['action_var'], '.3g')} | "
                    f"{_fmt(a['sep_median'], '.3g')} | {_fmt(a['time_ratio'], '.2f')}")
    return "\n".join(rows)
