"""Markdown of the benchmark: the DP vs CDP matrix section and the penalty strength section of RESULTS.md."""

from __future__ import annotations

from cdp_plugin.bench.aggregate import LOW_NOISE, aggregate, label, plateau, variant_key, window_label
from cdp_plugin.envs.tasks import TASKS

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


COLUMNS = (
    "- Columns: success pooled over all evaluation episodes and seeds, with a 95 % Wilson interval (per-seed "
    "rates after it); mean episode reward (sum of env rewards per episode; seed mean); action variance = "
    "variance over 16 samples per observation, mean over action entries and 16 dataset observations, in "
    "normalised action units² ([-1, 1] range); separation ratio = |A(z + δu) − A(z)| / δ, δ = 1e-3, "
    "median over the noise seeds (< 1: the sampler contracts); λ-viol = share of (sample, sampler step) where "
    "sym J_x0 leaves the step's exact contraction window (λ_max ≥ upper or λ_min ≤ lower, "
    "`cdp_plugin.samplers.step_contraction_bounds`) at the 10 DDIM steps, 16 dataset observations, Lanczos 8 "
    "steps (0 = every step contracts); λ_max(t=0) at the lowest noise level; step time = train-step time relative "
    "to a same-size LeRobot `diffusion`, measured interleaved in one process (older cells: lerobot-train "
    "`updt_s` ratio); latency = one action chunk for one observation (ms, median of 10, 1 thread)."
)


def _fmt(x, spec=".3f", none="–"):
    return none if x is None else format(x, spec)


def _seeds(xs, spec):
    return "/".join(format(x, spec) for x in xs)


def verdict(agg: dict, task: str, fraction: float) -> str:
    """Plain win / tie / loss of each CDP variant vs DP on success (CI overlap = tie) and reward."""
    out = []
    for pol, base in (
        ("cdp_frobenius", "dp"),
        ("cdp_hinge", "dp"),
        ("cdp_frobenius", "dp_x0"),
        ("cdp_hinge", "dp_x0"),
    ):
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
        out.append(
            f"{label(pol)} vs {label(base)}: {word} on success ({diff:+.0f} points; reward "
            f"{_fmt(a['reward'], '.2f')} vs {_fmt(dp['reward'], '.2f')}; action variance "
            f"{_fmt(a['action_var'], '.3g')} vs {_fmt(dp['action_var'], '.3g')}; separation ratio "
            f"{_fmt(a['sep_median'], '.3g')} vs {_fmt(dp['sep_median'], '.3g')})"
        )
    if not out:
        return ""
    return f"- {int(fraction * 100)} % data: " + "; ".join(out) + "."


def summary_lines(agg: dict) -> list[str]:
    """Counts over all (task, fraction) pairs: success wins / ties / losses, and the paper's other claims."""
    out = ["### Summary over all tasks and data fractions", ""]
    for pol, base in (
        ("cdp_frobenius", "dp"),
        ("cdp_hinge", "dp"),
        ("cdp_frobenius", "dp_x0"),
        ("cdp_hinge", "dp_x0"),
    ):
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
            f"- {label(pol)} vs {label(base)} ({len(pairs)} task × fraction pairs): success wins {w}, "
            f"ties {len(pairs) - w - lo}, losses {lo} (point estimate higher in {higher}, lower in {lower}); lower "
            f"action variance in {var}/{len(pairs)}; lower separation ratio in {sep}/{len(pairs)}{ratio}."
        )
    out.append("")
    return out


def _gamma(a: dict) -> str:
    """The gamma column: the weight, or for the adaptive weight the mean gamma reached and its target."""
    if not a["penalty"]:
        return "–"
    if a.get("adaptive_target") is not None:
        return f"adaptive → {_fmt(a['gamma'], '.2g')} (target {a['adaptive_target']:g})"
    return _fmt(a["gamma"], "g")


def _dataset_phrase(profile: dict) -> str:
    """Where each task's data came from: generated expert episodes, or Push-T's human demonstrations."""
    parts = [f"{k} {v} episodes" for k, v in profile["dataset_episodes"].items() if k in profile["tasks"]]
    made = f"expert datasets from `cdp_plugin.data.generate` ({', '.join(parts)})" if parts else ""
    human = "pusht: Chi et al.'s 206 human demonstrations" if "pusht" in profile["tasks"] else ""
    return "; ".join(x for x in (made, human) if x)


def plateau_lines(agg: dict) -> list[str]:
    """DP's success at each checkpoint (``plateau_evals``) and whether it stopped rising, or nothing."""
    pl = plateau([c for a in agg.values() for c in a["cells"]])
    if not pl:
        return []
    lines = [
        (
            "DP training length (success at each checkpoint; 'stopped rising' = the last checkpoint's interval "
            "overlaps the best earlier one's):"
        ),
        "",
    ]
    for p in pl:
        rows = ", ".join(f"{r['step']}: {100 * r['success']:.0f} %" for r in p["rows"])
        lines.append(
            f"- `{p['id']}`: {rows} -> {'stopped rising' if p['stopped_rising'] else 'STILL RISING'}"
        )
    return lines + [""]


def matrix_markdown(
    agg: dict,
    profile: dict,
    meta: dict,
    skipped: dict[str, str],
    failed: list[str],
    plots: list[str] | None = None,
) -> str:
    trained = sorted({a["gamma"] for a in agg.values() if a.get("penalty") and a.get("gamma") is not None})
    gammas = " / ".join(f"{g:g}" for g in trained) or "–"
    lines = [
        "## Matrix: DP vs CDP-frobenius vs CDP-hinge, with the DP-x0 control where run (LeRobot train/eval)",
        "",
        f"- Command(s), in order, all into one matrix directory: {meta.get('commands_md') or '`' + meta['command'] + '`'}",
        f"- Card: {meta['card']}",
        f"- Date: {meta['date']}; total wall time {meta.get('wall', '?')}",
        (
            f"- Profile `{profile['name']}`: {profile['steps']} training steps, batch {profile['batch_size']}, "
            f"UNet down_dims {profile['down_dims']}, lr {profile['lr']} (no warm-up), horizon {profile['horizon']}, "
            f"n_action_steps {profile['n_action_steps']}; seeds {profile['seeds']}; data fractions "
            f"{[int(f * 100) for f in profile['fractions']]} % (random *episode* subsets, seed 42+seed, same subset for "
            f"every policy); {_dataset_phrase(profile)}."
        ),
        (
            f"- Every policy is evaluated with the same deterministic sampler: DDIM (eta = 0), "
            f"{profile['num_inference_steps']} steps (`diffusion` has only DDPM/DDIM; cdp's default is DPM-Solver++). "
            "DP is LeRobot's `diffusion` with its defaults (epsilon prediction); CDP is `cdp` (x0 prediction, "
            f"penalty weight {gammas}, margin 0.1). DP-x0, where present, is `cdp` with `--policy.contraction_loss=none`: the "
            "x0 parameterisation without the penalty, which separates the penalty's effect from the parameterisation's."
        ),
        COLUMNS,
        "",
    ]
    tasks = [t for t in profile["tasks"] if any(k[0] == t for k in agg)]
    for task in tasks:
        lines += [
            f"### {task} (`--env.type={TASKS[task].env_type}`)",
            "",
            (
                "| policy | data | success % [95 % CI] (per seed) | reward (per seed) | action var | sep. ratio | "
                "λ-viol | λ_max(t=0) | step time ×DP | latency ms |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for frac in profile["fractions"]:
            for pol in profile["policies"]:
                a = agg.get((task, pol, frac))
                if a is None:
                    continue
                lines.append(
                    f"| {label(pol)} | {int(frac * 100)} % | {100 * a['success']:.0f} "
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
        lines += [
            "### Failed cells",
            "",
            *[f"- `{c}` (see `logs/{c}.error.txt` in the output directory)" for c in failed],
            "",
        ]
    shown = plots or [
        "benchmarks/plots/success_vs_fraction.png",
        "action_variance.png",
        "separation_ratio.png",
        "lambda_max_vs_noise.png",
    ]
    lines += plateau_lines(agg)
    lines += [
        "Plots: " + ", ".join(f"`{p}`" for p in shown) + " (separation ratio over training).",
        "",
        (
            f"Caveats: profile `{profile['name']}` trains for {profile['steps']} steps; with few evaluation episodes per "
            "seed the success intervals are wide, so many differences in success are ties. The sampler-level metrics "
            "(variance, separation ratio, λ) are far less noisy and show what training does to the sampler."
        ),
        "",
        (
            "Parameterisation: DP is an epsilon network, CDP an x0 network. The DP-x0 rows (same x0 network, no "
            "penalty) show how much of each CDP-vs-DP difference is due to the parameterisation and how much to the "
            "penalty: compare CDP with DP-x0 for the penalty's own effect."
            if any(k[1] == "dp_x0" for k in agg)
            else "Parameterisation: DP is an epsilon network, CDP an x0 network, so CDP-vs-DP differences mix the "
            "penalty's effect with the parameterisation's; add the control with `cdp-bench <profile> --policies dp_x0`."
        ),
    ]
    return "\n".join(lines)


def compact_table(agg: dict) -> str:
    rows = ["task | policy | data | success % [CI] | reward | act.var | sep | step×DP"]
    for (task, pol, frac), a in sorted(agg.items()):
        rows.append(
            f"{task} | {pol} | {int(frac * 100)}% | {100 * a['success']:.0f} [{100 * a['ci'][0]:.0f},"
            f"{100 * a['ci'][1]:.0f}] | {_fmt(a['reward'], '.2f')} | {_fmt(a['action_var'], '.3g')} | "
            f"{_fmt(a['sep_median'], '.3g')} | {_fmt(a['time_ratio'], '.2f')}"
        )
    return "\n".join(rows)


def _pct(s: dict) -> str:
    return f"{100 * s['success']:.0f} [{100 * s['ci'][0]:.0f}, {100 * s['ci'][1]:.0f}]"


def _range_sep(a: list, b: list) -> str:
    """``lower`` / ``higher`` when the seed ranges of a and b do not overlap, else ``overlap``."""
    a, b = [x for x in a if x is not None], [x for x in b if x is not None]
    if not a or not b:
        return "n/a"
    if max(a) < min(b):
        return "lower"
    if min(a) > max(b):
        return "higher"
    return "overlap"


def same_seeds(ref: dict, a: dict) -> dict:
    """DP-x0's statistics over the seeds ``a`` ran (a control with extra seeds is compared on the shared ones)."""
    cs = [c for c in ref["cells"] if c["cell"]["seed"] in set(a["seeds"])]
    if not cs or len(cs) == len(ref["cells"]):
        return ref
    return next(iter(aggregate(cs).values()))


def vs_control(a: dict, ref: dict) -> str:
    """One policy against DP-x0 on the same seeds: success (intervals), λ-viol at the low-noise steps (seed
    ranges), action variance."""
    ref = same_seeds(ref, a)
    if a["ci"][0] > ref["ci"][1]:
        succ = "success wins"
    elif a["ci"][1] < ref["ci"][0]:
        succ = "success loses"
    else:
        succ = "success ties (intervals overlap)"
    viol = _range_sep(a["viol_low_per_seed"], ref["viol_low_per_seed"])
    var = (a["action_var"] or 0) / ref["action_var"] if ref["action_var"] else float("nan")
    return (
        f"{succ} ({100 * (a['success'] - ref['success']):+.0f} points); λ-viol at t/T < {LOW_NOISE}: {viol} "
        f"(seed ranges {_fmt(min(a['viol_low_per_seed'], default=None), '.2f')}–"
        f"{_fmt(max(a['viol_low_per_seed'], default=None), '.2f')} vs "
        f"{_fmt(min(ref['viol_low_per_seed'], default=None), '.2f')}–"
        f"{_fmt(max(ref['viol_low_per_seed'], default=None), '.2f')}); action variance {var:.2f}× DP-x0's"
    )


DEFAULT_RULE = (
    "Rule for the shipped defaults, fixed before the results were read: among the CDP variants whose 10 %-data "
    "success interval overlaps the best 10 %-data success interval of any policy and whose action variance is at "
    "least half of DP-x0's (the spread is kept), take the one with the lowest λ-viol at the low-noise steps "
    f"(t/T < {LOW_NOISE}); ties broken by the smaller γ."
)


def pick_default(agg: dict, task: str, fraction: float = 0.1) -> str | None:
    """The CDP variant :data:`DEFAULT_RULE` picks on ``task`` (None when nothing qualifies)."""
    rows = {k[1]: a for k, a in agg.items() if k[0] == task and k[2] == fraction}
    if not rows or "dp_x0" not in rows:
        return None
    best_lo = max(a["ci"][0] for a in rows.values())
    ref_var = rows["dp_x0"]["action_var"] or 0.0
    ok = [
        (a["viol_low"] if a["viol_low"] is not None else 1.0, a["gamma"] or 0.0, p)
        for p, a in rows.items()
        if a["penalty"] and a["ci"][1] >= best_lo and (a["action_var"] or 0.0) >= 0.5 * ref_var
    ]
    return min(ok)[2] if ok else None


def penalty_markdown(agg: dict, profile: dict, meta: dict, failed: list[str], plots: list[str]) -> str:
    """The "penalty strength" section: every policy and variant per task and data fraction, against DP-x0."""
    lines = [
        "## Penalty strength: DP, DP-x0 and CDP over γ × noise window (issue 13)",
        "",
        f"- Command(s), in order, all into one matrix directory: {meta.get('commands_md') or '`' + meta['command'] + '`'}",
        f"- Card: {meta['card']}; date {meta['date']}; wall time {meta.get('wall', '?')}",
        (
            f"- Profile `{profile['name']}`: {profile['steps']} training steps, batch {profile['batch_size']}, UNet "
            f"down_dims {profile['down_dims']}, lr {profile['lr']}; seeds {profile['seeds']}; data fractions "
            f"{[int(f * 100) for f in profile['fractions']]} % (episode subsets, seed 42+seed); evaluation: DDIM "
            f"(eta 0) with {profile['num_inference_steps']} steps, and {sorted(profile.get('eval_steps') or [])} steps "
            "for success vs steps, same episodes."
        ),
        (
            "- CDP variants are `cdp` with `--policy.contraction_normalization=per_dim` (the penalty is the mean squared "
            "singular value of w_t (J_x0 + βI): γ means the same at every D; γ_per_dim = γ_paper / D) and the flags "
            "in the variant's name (γ; `--policy.contraction_noise_window=[0,0.1]` for the low-noise rows, `--policy.contraction_step_window` for `steps` rows; `hinge` in the name: `--policy.contraction_loss=hinge`, Lanczos, on the deployed grid's exact per-step window). DP-x0 "
            "is `cdp` with `--policy.contraction_loss=none`."
        ),
        COLUMNS.replace("- Columns:", "- Columns (as in the matrix):"),
        (
            f"- λ-viol low = the same at the sampler steps with t/T < {LOW_NOISE} (DDIM-10: the last step, t = 0); route "
            "share = share of the minority route among rollouts whose start and goal have two equally short routes "
            "(0.5 = both, as the expert; 0 = collapsed onto one)."
        ),
        "",
    ]
    tasks = [t for t in profile["tasks"] if any(k[0] == t for k in agg)]
    for task in tasks:
        steps = sorted({k for a in agg.values() for k in a["success_by_steps"]})
        lines += [
            f"### {task}",
            "",
            "| policy | γ | window | data | success % [95 % CI] (per seed) | "
            + " | ".join(f"succ. @{k}" for k in steps)
            + " | action var (per seed) | λ-viol all (per seed) | λ-viol low (per seed) | sep. ratio | "
            "step time ×DP | route share |",
            "|" + "---|" * (11 + len(steps)),
        ]
        for frac in sorted(profile["fractions"], reverse=True):
            keys = sorted((k for k in agg if k[0] == task and k[2] == frac), key=lambda k: variant_key(k[1]))
            for k in keys:
                a = agg[k]
                win = "–" if not a["penalty"] else window_label(a)
                md = a["modes"]
                lines.append(
                    f"| {label(k[1])} | {_gamma(a)} | {win} | {int(frac * 100)} % | "
                    f"{_pct(a)} ({_seeds([100 * x for x in a['success_per_seed']], '.0f')}; n={a['n_episodes']}) | "
                    + " | ".join(
                        _pct(a["success_by_steps"][s]) if s in a["success_by_steps"] else "–" for s in steps
                    )
                    + f" | {_fmt(a['action_var'], '.3g')} ({_seeds(a['action_var_per_seed'], '.3g')}) | "
                    f"{_fmt(a['viol'], '.2f')} ({_seeds([x or 0 for x in a['viol_per_seed']], '.2f')}) | "
                    f"{_fmt(a['viol_low'], '.2f')} ({_seeds([x or 0 for x in a['viol_low_per_seed']], '.2f')}) | "
                    f"{_fmt(a['sep_median'], '.3g')} | {_fmt(a['time_ratio'], '.2f')} | "
                    f"{_fmt(md and md['minority_share'], '.2f')}{f' (n={md[chr(110)]})' if md else ''} |"
                )
        lines.append("")
        lines.append(
            "Against DP-x0 (same task, data fraction and seeds; a win only where intervals separate):"
        )
        for frac in sorted(profile["fractions"], reverse=True):
            ref = agg.get((task, "dp_x0", frac))
            if ref is None:
                continue
            for k in sorted(
                (k for k in agg if k[0] == task and k[2] == frac and agg[k]["penalty"]),
                key=lambda k: variant_key(k[1]),
            ):
                lines.append(f"- {int(frac * 100)} % data, {label(k[1])}: {vs_control(agg[k], ref)}.")
        choice = pick_default(agg, task)
        lines += [
            "",
            DEFAULT_RULE + f" On {task} it picks: **{choice or 'none (no variant qualifies)'}**.",
            "",
        ]
    lines += plateau_lines(agg)
    if failed:
        lines += ["Failed cells: " + ", ".join(f"`{c}`" for c in failed), ""]
    lines += ["Plots: " + ", ".join(f"`{p}`" for p in plots) + ".", ""]
    return "\n".join(lines)
