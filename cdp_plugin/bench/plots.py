"""PNG plots of aggregated cells (:func:`cdp_plugin.bench.aggregate.aggregate`): one small function per figure."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from cdp_plugin.bench.aggregate import label, window_label

COLORS = {"dp": "tab:gray", "cdp_frobenius": "tab:blue", "cdp_hinge": "tab:orange", "dp_x0": "tab:green"}
LAMBDA_TICKS = (
    -10,
    -5,
    -2,
    -1,
    -0.5,
    -0.2,
    0,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.7,
    1,
    1.5,
    2,
    3,
    5,
    10,
    20,
    50,
    100,
)


def color(policy: str, i: int = 0) -> str:
    return COLORS.get(policy, f"C{(i + 4) % 10}")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_task(
    agg: dict, profile: dict, path: Path, title: str, draw: Callable, legend_size: float = 8
) -> Path:
    """One panel per task, ``draw(ax, task)`` fills it; saved to ``path``."""
    plt = _plt()
    tasks = [t for t in profile["tasks"] if any(k[0] == t for k in agg)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 5.5 * len(tasks)), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        draw(ax, task)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=legend_size)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pols(agg: dict, profile: dict) -> list[str]:
    return [p for p in profile["policies"] if any(k[1] == p for k in agg)]


def _ci_err(a: dict) -> tuple[float, float]:
    # max(0, .): the Wilson bound can round to just inside the point estimate at 0 % / 100 %
    return max(0.0, 100 * (a["success"] - a["ci"][0])), max(0.0, 100 * (a["ci"][1] - a["success"]))


def plot_success_vs_fraction(agg: dict, profile: dict, path: Path) -> Path:
    fracs = sorted(profile["fractions"])

    def draw(ax, task):
        for j, pol in enumerate(_pols(agg, profile)):
            pts = [
                (100 * f * (1 + 0.04 * (j - 1)), agg[(task, pol, f)]) for f in fracs if (task, pol, f) in agg
            ]
            if pts:
                ax.errorbar(
                    [x for x, _ in pts],
                    [100 * a["success"] for _, a in pts],
                    yerr=list(zip(*[_ci_err(a) for _, a in pts])),
                    marker="o",
                    capsize=4,
                    color=color(pol, j),
                    label=label(pol),
                )
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in fracs], [f"{int(100 * f)} %" for f in fracs])
        ax.set_ylim(-5, 105)
        ax.set_xlabel("training data fraction (% of expert episodes)")
        ax.set_ylabel("success rate (%), 95 % Wilson CI")

    return _per_task(
        agg,
        profile,
        path,
        f"Success vs data fraction ({profile['name']} profile, seeds {profile['seeds']})",
        draw,
    )


def plot_action_variance(agg: dict, profile: dict, path: Path) -> Path:
    fracs = sorted(profile["fractions"])
    pols = _pols(agg, profile)
    width = 0.8 / max(len(pols), 1)

    def draw(ax, task):
        for j, pol in enumerate(pols):
            for i, f in enumerate(fracs):
                a = agg.get((task, pol, f))
                if a is None:
                    continue
                x = i + (j - (len(pols) - 1) / 2) * width
                ax.bar(x, a["action_var"], width, color=color(pol, j), label=label(pol) if i == 0 else None)
                ax.scatter(
                    [x] * len(a["action_var_per_seed"]), a["action_var_per_seed"], color="k", s=10, zorder=3
                )
        ax.set_xticks(range(len(fracs)), [f"{int(100 * f)} % data" for f in fracs])
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 4)  # room for the legend
        ax.set_ylabel("action variance per observation\n(normalised action units², log)")

    return _per_task(
        agg,
        profile,
        path,
        f"Per-observation action variance, DDIM-{profile['num_inference_steps']} "
        "(bars: seed mean, dots: seeds)",
        draw,
    )


def plot_separation_over_training(agg: dict, profile: dict, path: Path) -> Path:
    def draw(ax, task):
        for j, pol in enumerate(_pols(agg, profile)):
            for f in profile["fractions"]:
                a = agg.get((task, pol, f))
                if a is None:
                    continue
                by_step = defaultdict(list)
                for c in a["cells"]:
                    for r in c["sep_over_training"]:
                        by_step[r["step"]].append(r["median"])
                steps = sorted(by_step)
                ax.plot(
                    steps,
                    [statistics.fmean(by_step[s]) for s in steps],
                    marker="o",
                    color=color(pol, j),
                    linestyle="-" if f >= 1 else "--",
                    label=f"{label(pol)}, {int(100 * f)} %",
                )
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("separation ratio |ΔA| / |Δz| (median, log)")

    return _per_task(
        agg,
        profile,
        path,
        "Sampler separation ratio over training (< 1: contractive; seed mean)",
        draw,
        legend_size=7,
    )


def _lambda_axis(ax) -> str:
    ys = [v for ln in ax.get_lines() for v in ln.get_ydata()]
    scale = "log" if ys and min(ys) > 0 else "symlog"
    if scale == "log":
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=0.1)
    if ys:
        lo, hi = min(ys), max(ys)
        ticks = [
            t
            for t in LAMBDA_TICKS
            if lo * (0.9 if lo > 0 else 1.1) <= t <= hi * 1.1 and (scale == "symlog" or t > 0)
        ]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    return scale


def plot_lambda_vs_noise(agg: dict, profile: dict, path: Path) -> Path:
    def draw(ax, task):
        bounds: dict[int, float] = {}
        for j, pol in enumerate(_pols(agg, profile)):
            for f in profile["fractions"]:
                a = agg.get((task, pol, f))
                if a is None:
                    continue
                by_t = defaultdict(list)
                for c in a["cells"]:
                    for r in c["probe"]["lambda_profile"]:
                        by_t[r["t"]].append(r["lambda_max_mean"])
                        bounds[r["t"]] = r.get("upper", r["alpha"])
                ts = sorted(by_t)
                ax.plot(
                    ts,
                    [statistics.fmean(by_t[t]) for t in ts],
                    marker="o",
                    ms=3,
                    color=color(pol, j),
                    linestyle="-" if f >= 1 else "--",
                    label=f"{label(pol)}, {int(100 * f)} %",
                )
        if bounds:
            ts = sorted(bounds)
            ax.plot(
                ts, [bounds[t] for t in ts], color="k", lw=1.5, ls=":", label="step's upper contraction bound"
            )
        scale = _lambda_axis(ax)
        ax.set_xlabel("noise level: training timestep t (of 100; DDIM-10 grid)")
        ax.set_ylabel(f"λ_max(sym J_x0) (dimensionless, {scale})")

    return _per_task(
        agg,
        profile,
        path,
        "λ_max(sym J_x0) per sampler step (the step contracts below the bound)",
        draw,
        legend_size=7,
    )


def plot_success_vs_steps(agg: dict, profile: dict, path: Path) -> Path:
    def draw(ax, task):
        for j, pol in enumerate(_pols(agg, profile)):
            for f in profile["fractions"]:
                a = agg.get((task, pol, f))
                if a is None or not a["success_by_steps"]:
                    continue
                ks = sorted(a["success_by_steps"])
                st = [a["success_by_steps"][k] for k in ks]
                ax.errorbar(
                    [k * (1 + 0.03 * j) for k in ks],
                    [100 * s["success"] for s in st],
                    yerr=list(zip(*[_ci_err(s) for s in st])),
                    marker="o",
                    capsize=3,
                    color=color(pol, j),
                    linestyle="-" if f >= 1 else "--",
                    label=f"{label(pol)}, {int(100 * f)} %",
                )
        ax.set_xscale("log")
        steps = sorted({int(k) for (t, _p, _f), a in agg.items() if t == task for k in a["success_by_steps"]})
        if (
            steps
        ):  # plain tick labels at the evaluated step counts (log ticks are unreadable on a short range)
            ax.set_xticks(steps, [str(k) for k in steps])
            ax.minorticks_off()
        ax.set_ylim(-5, 105)
        ax.set_xlabel("DDIM sampling steps (log)")
        ax.set_ylabel("success rate (%), 95 % Wilson CI")

    return _per_task(
        agg, profile, path, "Success vs number of sampling steps (pooled over seeds)", draw, legend_size=6
    )


def plot_penalty_strength(agg: dict, profile: dict, path: Path) -> Path:
    """Success and action variance against gamma, one line per noise window and data fraction; DP-x0 (no penalty)
    as a horizontal band (its Wilson interval / seed range)."""
    plt = _plt()
    tasks = [t for t in profile["tasks"] if any(k[0] == t for k in agg)]
    fig, axes = plt.subplots(2, len(tasks), figsize=(max(6.5, 5.5 * len(tasks)), 8), squeeze=False)
    for col, task in enumerate(tasks):
        ax_s, ax_v = axes[0][col], axes[1][col]
        for f in sorted(profile["fractions"], reverse=True):
            ls = "-" if f >= 1 else "--"
            groups: dict[str, list] = defaultdict(list)
            for (t, _pol, ff), a in agg.items():
                # an adaptive gamma is an outcome, not a setting: no line of its own against gamma
                if (
                    t == task
                    and ff == f
                    and a["penalty"]
                    and a["gamma"] is not None
                    and not a.get("adaptive_target")
                ):
                    loss = a.get("loss", "frobenius")
                    if loss == "hinge":  # two hinges differ in kind (Lanczos both ends, fd_ritz one-sided)
                        loss = f"hinge {a.get('estimator', 'lanczos')}"
                    win = f"{loss}, {window_label(a, 'all noise levels')}"
                    groups[win].append(a)
            for gi, (win, rows) in enumerate(sorted(groups.items())):
                rows.sort(key=lambda a: a["gamma"])
                g = [a["gamma"] for a in rows]
                c = f"C{gi}"
                ax_s.errorbar(
                    g,
                    [100 * a["success"] for a in rows],
                    yerr=list(zip(*[_ci_err(a) for a in rows])),
                    marker="o",
                    capsize=3,
                    color=c,
                    ls=ls,
                    label=f"CDP, {win}, {int(100 * f)} %",
                )
                ax_v.plot(
                    g,
                    [a["action_var"] for a in rows],
                    marker="o",
                    color=c,
                    ls=ls,
                    label=f"CDP, {win}, {int(100 * f)} %",
                )
                for a in rows:
                    ax_v.scatter(
                        [a["gamma"]] * len(a["action_var_per_seed"]), a["action_var_per_seed"], color=c, s=8
                    )
            ref = agg.get((task, "dp_x0", f))
            if ref is not None:
                ax_s.axhspan(
                    100 * ref["ci"][0], 100 * ref["ci"][1], color="tab:green", alpha=0.12 if f >= 1 else 0.06
                )
                ax_s.axhline(
                    100 * ref["success"], color="tab:green", ls=ls, lw=1, label=f"DP-x0, {int(100 * f)} %"
                )
                vs = ref["action_var_per_seed"]
                ax_v.axhspan(min(vs), max(vs), color="tab:green", alpha=0.12 if f >= 1 else 0.06)
                ax_v.axhline(
                    ref["action_var"], color="tab:green", ls=ls, lw=1, label=f"DP-x0, {int(100 * f)} %"
                )
        for ax in (ax_s, ax_v):
            ax.set_xscale("log")
            ax.set_xlabel("γ (per-dimension normalisation, log)")
            ax.grid(alpha=0.3)
        ax_s.set_ylim(-5, 105)
        ax_s.set_ylabel("success rate (%), 95 % Wilson CI")
        ax_v.set_yscale("log")
        ax_v.set_ylabel("action variance per observation (log)")
        ax_s.set_title(task)
        ax_s.legend(fontsize=6)
    fig.suptitle(
        "Penalty strength: success and action variance vs γ (bands: DP-x0 interval / seed range)", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


MATRIX_PLOTS = {
    "success_vs_fraction.png": plot_success_vs_fraction,
    "action_variance.png": plot_action_variance,
    "separation_ratio.png": plot_separation_over_training,
    "lambda_max_vs_noise.png": plot_lambda_vs_noise,
}
PENALTY_PLOTS = {
    "penalty_strength.png": plot_penalty_strength,
    "success_vs_steps.png": plot_success_vs_steps,
    "penalty_lambda_max_vs_noise.png": plot_lambda_vs_noise,
}


def make_plots(
    agg: dict, profile: dict, plots_dir: Path, plots: dict | None = None, prefix: str = ""
) -> list[Path]:
    """Write every plot of ``plots`` (default: the matrix plots) into ``plots_dir``; returns the paths."""
    return [
        fn(agg, profile, Path(plots_dir) / f"{prefix}{name}") for name, fn in (plots or MATRIX_PLOTS).items()
    ]
