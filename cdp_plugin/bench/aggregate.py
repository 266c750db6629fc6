"""Aggregate finished cells (``<out>/cells/*.json``) per (task, policy, data fraction): success pooled over
episodes and seeds with a Wilson interval, every seed's number, and seed means of the sampler metrics."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict

from cdp_plugin.bench.metrics import wilson_interval
from cdp_plugin.contraction import LOSS_DEFAULTS

LOW_NOISE = 0.1  # "low noise": sampler steps with t / T below this (the paper's RL window)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def window_label(a: dict, all_label: str = "all") -> str:
    """Where a variant penalises: ``all``, a training noise window ``t/T in [lo, hi]`` or a window of the deployed
    sampler's steps ``steps [lo, hi]`` (fractions of its k steps, counted from the last)."""
    if a.get("noise_window", [0.0, 1.0]) != [0.0, 1.0]:
        return f"t/T in {a['noise_window']}"
    if a.get("step_window", [0.0, 1.0]) != [0.0, 1.0]:
        return f"steps {a['step_window']}"
    return all_label


def cell_gamma(cell: dict) -> float | None:
    """The penalty weight a cell trained with: the gamma an adaptive weight reached by the end of training, its
    checkpoint's config (recorded since the default moved from 0.1 to 0.2), else its flags, else its loss's
    default (frobenius 0.1, hinge 1; cdp cells only)."""
    trained = cell.get("contraction") or {}
    if "contraction_weight_reached" in trained:
        return trained["contraction_weight_reached"]
    if "contraction_weight" in trained:
        return trained["contraction_weight"]
    flags = cell.get("policy_flags") or []
    if "--policy.type=cdp" not in flags:
        return flag_value(flags, "contraction_weight", None)
    return flag_value(flags, "contraction_weight", loss_default(flags, "weight"))


def loss_default(flags: list[str], name: str):
    """The ``estimator`` or ``weight`` a cdp cell's loss (``frobenius`` where its flags name none) takes unset."""
    return LOSS_DEFAULTS.get(flag_value(flags, "contraction_loss", "frobenius"), {}).get(name)


def flag_value(flags: list[str], name: str, default=None):
    """The value of ``--policy.<name>=v`` among lerobot-train flags (a float, a [lo, hi] list, or the string)."""
    for f in flags or []:
        if f.startswith(f"--policy.{name}="):
            v = f.split("=", 1)[1]
            if v.startswith("["):
                return [float(x) for x in v.strip("[]").split(",")]
            try:
                return float(v)
            except ValueError:
                return v
    return default


def success_stats(successes: list[bool]) -> dict:
    n, s = len(successes), sum(successes)
    return {
        "success": s / n if n else float("nan"),
        "ci": wilson_interval(s, n),
        "n_episodes": n,
        "n_success": s,
    }


def violation_share(profile_rows: list[dict], lo: float = 0.0, hi: float = 1.0, T: int = 100) -> float | None:
    """Mean ``violation_frac`` of a per-step lambda profile over the sampler steps with ``lo <= t/T < hi``."""
    rows = [r for r in profile_rows if lo <= r["t"] / T < hi]
    return mean([r["violation_frac"] for r in rows])


def _by_steps(cs: list[dict]) -> dict[int, dict]:
    out: dict[int, list[bool]] = defaultdict(list)
    for c in cs:
        by = c.get("eval_by_steps") or {str(c["eval"].get("num_inference_steps", 10)): c["eval"]}
        for k, e in by.items():
            out[int(k)] += e["successes"]
    return {k: success_stats(v) for k, v in sorted(out.items())}


def _modes(cs: list[dict]) -> dict | None:
    ms = [c["modes"] for c in cs if c.get("modes")]
    if not ms:
        return None
    counts: dict[str, int] = defaultdict(int)
    for m in ms:
        for k, v in m["multimodal_counts"].items():
            counts[k] += v
    n = sum(counts.values())
    return {
        "counts": dict(counts),
        "n": n,
        "minority_share": (min(counts.values()) / n if len(counts) >= 2 else 0.0) if n else None,
        "per_seed": [m["minority_share"] for m in ms],
    }


def aggregate(cells: list[dict]) -> dict[tuple, dict]:
    """``{(task, policy, fraction): stats}`` (see the module docstring); ``time_ratio`` is the in-process
    interleaved step time relative to a same-size DP where the probe measured it, else LeRobot's ``updt_s``
    relative to the DP cell of the same task, fraction and seed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        groups[(c["cell"]["task"], c["cell"]["policy"], c["cell"]["fraction"])].append(c)
    dp_update = {
        (c["cell"]["task"], c["cell"]["fraction"], c["cell"]["seed"]): c.get("update_s")
        for c in cells
        if c["cell"]["policy"] == "dp"
    }
    agg = {}
    for k, cs in sorted(groups.items()):
        cs = sorted(cs, key=lambda c: c["cell"]["seed"])
        ratios = []
        for c in cs:
            st = c["probe"].get("step_time")
            d = dp_update.get((k[0], k[2], c["cell"]["seed"]))
            if st:
                ratios.append(st["ratio"])
            elif d and c.get("update_s"):
                ratios.append(c["update_s"] / d)
        prof = [c["probe"]["lambda_profile"] for c in cs]
        flags = cs[0].get("policy_flags") or []
        loss = flag_value(flags, "contraction_loss", "frobenius")
        # the flags, else the trained config (a cdp cell with no flags trains the default, an adaptive gamma)
        trained = cs[0].get("contraction") or {}
        adaptive_target = flag_value(
            flags, "contraction_adaptive_target", trained.get("contraction_adaptive_target")
        )
        agg[k] = {
            "seeds": [c["cell"]["seed"] for c in cs],
            **success_stats([s for c in cs for s in c["eval"]["successes"]]),
            "success_per_seed": [statistics.fmean(c["eval"]["successes"]) for c in cs],
            "success_by_steps": _by_steps(cs),
            "reward": mean([c["eval"]["avg_sum_reward"] for c in cs]),
            "reward_per_seed": [c["eval"]["avg_sum_reward"] for c in cs],
            "action_var": mean([c["probe"]["action_var"]["mean"] for c in cs]),
            "action_var_per_seed": [c["probe"]["action_var"]["mean"] for c in cs],
            "sep_median": mean([c["probe"]["sep_ratio"]["median"] for c in cs]),
            "sep_per_seed": [c["probe"]["sep_ratio"]["median"] for c in cs],
            "viol": mean([r["violation_frac"] for p in prof for r in p]),
            "viol_per_seed": [violation_share(p) for p in prof],
            "viol_low": mean([violation_share(p, 0.0, LOW_NOISE) for p in prof]),
            "viol_low_per_seed": [violation_share(p, 0.0, LOW_NOISE) for p in prof],
            "lambda_low_noise": mean([min(p, key=lambda r: r["t"])["lambda_max_mean"] for p in prof]),
            "time_ratio": mean(ratios),
            "time_ratio_per_seed": ratios,
            "update_s": mean([c.get("update_s") for c in cs]),
            "latency_ms": mean([c["probe"]["latency_ms"] for c in cs]),
            "final_loss": mean([c.get("final_loss") for c in cs]),
            "modes": _modes(cs),
            "flags": flags,
            # an adaptive gamma differs per seed: the mean reached; a fixed one is the setting
            "gamma": mean([cell_gamma(c) for c in cs]) if adaptive_target is not None else cell_gamma(cs[0]),
            "adaptive_target": adaptive_target,
            "noise_window": flag_value(flags, "contraction_noise_window", [0.0, 1.0]),
            "step_window": flag_value(flags, "contraction_step_window", [0.0, 1.0]),
            "loss": loss,
            "estimator": flag_value(flags, "contraction_estimator", loss_default(flags, "estimator")),
            "penalty": loss != "none" and "--policy.type=cdp" in flags,
            "cells": cs,
        }
    return agg


def plateau(cells: list[dict]) -> list[dict]:
    """Per DP cell with checkpoint evaluations: success at each checkpoint and whether it stopped rising (the last
    checkpoint's Wilson interval overlaps the best earlier one's)."""
    out = []
    for c in cells:
        sot = c.get("success_over_training")
        if not sot:
            continue
        rows = [{"step": r["step"], **success_stats(r["successes"])} for r in sot]
        best = max(rows[:-1], key=lambda r: r["success"]) if len(rows) > 1 else rows[-1]
        out.append({"id": c["id"], "rows": rows, "stopped_rising": rows[-1]["ci"][0] <= best["ci"][1]})
    return out


def label(policy: str) -> str:
    from cdp_plugin.bench.matrix import POLICY_LABELS

    return POLICY_LABELS.get(policy, policy)


def variant_key(name: str) -> tuple:
    """Sort key: built-in policies first, then variants by gamma where the name carries one (``g<value>``)."""
    m = re.search(r"g([0-9.]+)", name)
    return (1, float(m.group(1)) if m else 0.0, name)
