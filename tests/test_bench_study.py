"""The issue-13 harness pieces on cases with known answers: variants with arbitrary flags, the exact per-step
lambda-viol, interleaved timing, route classification and the penalty-strength report."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from test_bench_metrics import fake_record, tiny_profile

from cdp_plugin.bench.aggregate import aggregate, flag_value, plateau
from cdp_plugin.bench.markdown import penalty_markdown, pick_default
from cdp_plugin.bench.matrix import POLICIES, load_variants, parse_variant, policy_flags
from cdp_plugin.bench.metrics import interleaved_step_times, step_lambda_profile
from cdp_plugin.bench.modes import coverage, pointmaze_route
from cdp_plugin.bench.plots import PENALTY_PLOTS, make_plots
from cdp_plugin.samplers import (
    ScheduleConfig,
    step_contraction_bounds,
    training_scheduler,
)


def test_variants_from_flags_and_files(tmp_path):
    name, flags = parse_variant(
        "g3=cdp:--policy.contraction_weight=3,--policy.contraction_noise_window=[0,0.1]"
    )
    assert name == "g3" and flags == [
        "--policy.type=cdp",
        "--policy.contraction_weight=3",
        "--policy.contraction_noise_window=[0,0.1]",
    ]
    assert parse_variant("x=dp_x0:--policy.horizon=8")[1] == [*POLICIES["dp_x0"], "--policy.horizon=8"]
    assert parse_variant("d=dp:")[1] == ["--policy.type=diffusion"]
    for bad, msg in (
        ("g3", "expected name=base"),
        ("a__b=cdp:", "no '__'"),
        ("g=foo:--x=1", "base 'foo'"),
        ("g=cdp:x=1", "must start with '--'"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_variant(bad)
    (tmp_path / "v.yaml").write_text(
        "a: 'cdp:--policy.contraction_weight=1'\nb: ['--policy.contraction_weight=2']\n"
        "c: {base: dp, flags: ['--policy.horizon=8']}\n"
    )
    v = load_variants(tmp_path / "v.yaml")
    assert v == {
        "a": ["--policy.type=cdp", "--policy.contraction_weight=1"],
        "b": ["--policy.type=cdp", "--policy.contraction_weight=2"],
        "c": ["--policy.type=diffusion", "--policy.horizon=8"],
    }
    (tmp_path / "v.json").write_text(json.dumps({"a": "cdp:--policy.contraction_weight=1"}))
    assert load_variants(tmp_path / "v.json")["a"][-1] == "--policy.contraction_weight=1"
    prof = tiny_profile(variants=v, policies=["dp", "a"])
    assert policy_flags(prof, "a") == v["a"] and policy_flags(prof, "dp") == POLICIES["dp"]
    with pytest.raises(ValueError, match="unknown policy 'zz'"):
        policy_flags(prof, "zz")
    assert flag_value(v["a"], "contraction_weight") == 1.0
    assert flag_value(["--policy.contraction_noise_window=[0,0.1]"], "contraction_noise_window") == [0.0, 0.1]


def test_cli_variant_errors_are_one_line(tmp_path, capsys):
    from cdp_plugin.bench.cli import main

    with pytest.raises(SystemExit, match="cdp-bench: .*expected name=base"):
        main(["--variant", "nonsense", "--out", str(tmp_path), "--report-only"])
    with pytest.raises(SystemExit, match="variants file .* not found"):
        main(["--variants-file", str(tmp_path / "absent.yaml"), "--out", str(tmp_path), "--report-only"])


def test_step_lambda_profile_flags_exactly_the_steps_outside_the_window():
    """Linear x0-denoiser with sym J = c I: lambda_max = lambda_min = c, so a step violates iff c is outside
    its exact window; the rows carry the bounds of :func:`step_contraction_bounds`."""
    sched = training_scheduler(ScheduleConfig(100, prediction_type="sample"))
    bounds = step_contraction_bounds(sched, "ddim", 10)
    x0 = torch.randn(16, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for c in (0.3, 0.9, -2.0):
        rows = step_lambda_profile(lambda x, t, c=c: c * x, x0, sched, "ddim", 10, "sample", num_iters=3)
        assert [r["t"] for r in rows] == [b.t for b in bounds] and all(r["n"] == 16 for r in rows)
        for r, b in zip(rows, bounds):
            assert r["upper"] == b.upper and r["lambda_max_mean"] == pytest.approx(c, abs=1e-6)
            assert r["violation_frac"] == float(not (b.lower < c < b.upper)), (c, b)
            assert r["violation_alpha_frac"] == float(c >= r["alpha"])


def test_interleaved_step_times_rank_callables():
    t = interleaved_step_times({"slow": lambda: time.sleep(0.004), "fast": lambda: None}, repeats=5, warmup=1)
    assert t["slow"] >= 0.004 > t["fast"]


def test_pointmaze_route_and_coverage():
    xs = np.linspace(-2.5, 2.5, 51)
    over = np.stack(
        [xs, 1 - np.abs(xs) / 2.5], 1
    )  # middle row (y = 0) -> top row at the centre -> middle row
    under = over * np.array([1, -1])
    goal = np.array([[2.5, 0.0]])
    assert pointmaze_route(over, goal) == ("2->2", "over") and pointmaze_route(under, goal) == (
        "2->2",
        "under",
    )
    assert pointmaze_route(over[:10], goal)[1] is None  # never reached the middle column
    cov = coverage([("2->2", "over")] * 3 + [("2->2", "under")] + [("1->1", "over")] * 5, {"2->2"})
    assert (
        cov["minority_share"] == 0.25
        and cov["multimodal_n"] == 4
        and cov["per_situation"]["1->1"] == {"over": 5}
    )
    assert coverage([("2->2", "over")] * 3, {"2->2"})["minority_share"] == 0.0


def _study_cells():
    cells = []
    flags = {
        "dp_x0": POLICIES["dp_x0"],
        "g1": ["--policy.type=cdp", "--policy.contraction_weight=1"],
        "g10": ["--policy.type=cdp", "--policy.contraction_weight=10"],
        "g1low": [
            "--policy.type=cdp",
            "--policy.contraction_weight=1",
            "--policy.contraction_noise_window=[0,0.1]",
        ],
    }
    succ = {
        "dp_x0": [True] * 7 + [False] * 3,
        "g1": [True] * 8 + [False] * 2,
        "g10": [True] * 2 + [False] * 8,
        "g1low": [True] * 7 + [False] * 3,
    }
    var = {"dp_x0": 0.2, "g1": 0.15, "g10": 0.01, "g1low": 0.19}
    viol = {"dp_x0": 0.8, "g1": 0.3, "g10": 0.0, "g1low": 0.1}
    for seed in (0, 1):
        for pol, f in flags.items():
            r = fake_record("pointmaze", pol, 0.1, seed, succ[pol])
            r["policy_flags"] = f
            r["probe"]["action_var"]["mean"] = var[pol] * (1 + 0.1 * seed)
            r["probe"]["lambda_profile"][0]["violation_frac"] = (
                viol[pol] + 0.05 * seed
            )  # t = 0: the low-noise step
            r["probe"]["step_time"] = {"ratio": 1.1 if pol != "dp_x0" else 1.0}
            r["eval_by_steps"] = {"1": {"successes": succ[pol][:5]}, "10": r["eval"]}
            r["modes"] = {"multimodal_counts": {"over": 3, "under": 1}, "minority_share": 0.25}
            cells.append(r)
    dp = fake_record("pointmaze", "dp", 0.1, 0, [False] * 10)
    dp["success_over_training"] = [
        {"step": 2, "successes": [True] * 2 + [False] * 8},
        {"step": 4, "successes": [True] * 3 + [False] * 7},
    ]
    return cells + [dp]


def test_penalty_report_rule_and_plots(tmp_path):
    agg = aggregate(_study_cells())
    g1 = agg[("pointmaze", "g1", 0.1)]
    assert g1["gamma"] == 1.0 and g1["penalty"] and g1["noise_window"] == [0.0, 1.0]
    assert g1["time_ratio"] == pytest.approx(1.1) and g1["success_by_steps"][1]["n_episodes"] == 10
    assert agg[("pointmaze", "g1low", 0.1)]["noise_window"] == [0.0, 0.1]
    assert not agg[("pointmaze", "dp_x0", 0.1)]["penalty"]
    assert g1["modes"]["minority_share"] == 0.25 and g1["viol_low_per_seed"] == pytest.approx([0.3, 0.35])
    # the rule: success interval overlapping the best, variance >= half of DP-x0's, lowest low-noise lambda-viol;
    # g10 collapses the variance, so g1low (viol 0.1) wins over g1 (0.3)
    assert pick_default(agg, "pointmaze") == "g1low"
    (p,) = plateau([c for a in agg.values() for c in a["cells"]])
    assert p["stopped_rising"] and [r["step"] for r in p["rows"]] == [2, 4]
    prof = {
        "name": "quick",
        "tasks": ["pointmaze"],
        "policies": ["dp", "dp_x0", "g1", "g10", "g1low"],
        "fractions": [0.1],
        "seeds": [0, 1],
        "steps": 4,
        "batch_size": 4,
        "down_dims": [8],
        "lr": 1e-3,
        "num_inference_steps": 10,
        "eval_steps": [1, 10],
    }
    md = penalty_markdown(agg, prof, {"command": "cdp-bench", "card": "CPU", "date": "today"}, [], ["a.png"])
    assert "### pointmaze" in md and "| g10 | 10 | all | 10 % | 20 [" in md and "succ. @1" in md
    assert "g1: success ties" in md and "λ-viol at t/T < 0.1: lower" in md and "it picks: **g1low**" in md
    assert "stopped rising" in md
    paths = make_plots(agg, prof, tmp_path, PENALTY_PLOTS)
    assert {q.name for q in paths} == set(PENALTY_PLOTS) and all(q.stat().st_size > 10_000 for q in paths)

    # a control run with an extra seed is compared with a variant on the seeds they share
    from cdp_plugin.bench.markdown import vs_control

    extra = fake_record("pointmaze", "dp_x0", 0.1, 2, [True] * 7 + [False] * 3)
    extra["policy_flags"] = ["--policy.type=cdp", "--policy.contraction_loss=none"]
    extra["probe"]["action_var"]["mean"] = 100.0  # an outlier seed that only the control ran
    more = aggregate(_study_cells() + [extra])
    ref = more[("pointmaze", "dp_x0", 0.1)]
    assert ref["seeds"] == [0, 1, 2]
    assert vs_control(more[("pointmaze", "g1", 0.1)], ref).endswith("action variance 0.75× DP-x0's")
