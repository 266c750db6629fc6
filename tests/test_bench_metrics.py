"""The benchmark harness's metric code on cases with known answers (issue 7)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cdp_plugin.bench.matrix import Cell, Profile, cells_of, load_cells, run_matrix
from cdp_plugin.bench.metrics import (
    action_variance,
    lambda_profile,
    mean_update_seconds,
    parse_train_log,
    sampler_separation,
    wilson_interval,
)
from cdp_plugin.bench.report import aggregate, make_plots, matrix_markdown, replace_section, verdict
from cdp_plugin.samplers import ScheduleConfig, make_scheduler


# ----------------------------------------------------------------------------------------- Wilson interval
@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (5, 10, 0.2366, 0.7634),  # textbook values
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 20, 0.0089, 0.2361),
        (81, 263, 0.2553, 0.3662),  # Wikipedia-style example: 81/263
    ],
)
def test_wilson_interval_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)


def test_wilson_interval_edges_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(500, 1000)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 1000), rel=1e-2)
    for bad in ((-1, 5), (6, 5), (1, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


# ----------------------------------------------------------------------------------------- separation ratio
def test_separation_ratio_of_a_scaled_rotation_is_its_scale():
    th = 0.7
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
    for c in (0.3, 1.0, 2.5):
        m = c * rot
        r = sampler_separation(
            lambda z: z @ m.T,  # noqa: B023
            torch.randn(64, 2, dtype=torch.float64),
            delta=1e-3,
            generator=torch.Generator().manual_seed(0),
        )
        assert r.shape == (64,)
        assert torch.allclose(r, torch.full_like(r, c), atol=1e-9)


def test_separation_ratio_of_a_diagonal_map_lies_between_its_singular_values_and_matches_the_direction():
    s = torch.tensor([0.1, 3.0], dtype=torch.float64)
    noise = torch.randn(200, 1, 2, dtype=torch.float64)  # chunk-shaped (B, H, A)
    r = sampler_separation(lambda z: z * s, noise, delta=1e-2, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    u = torch.randn(noise.shape, generator=g, dtype=torch.float64)
    u = u / u.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    assert torch.allclose(r, (u * s).flatten(1).norm(dim=1), atol=1e-9)
    assert (r >= 0.1 - 1e-9).all() and (r <= 3.0 + 1e-9).all()


# ----------------------------------------------------------------------------------------- action variance
def test_action_variance_of_a_known_gaussian():
    K, N = 3, 20000
    mu = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    std = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)

    def sample_fn(z):  # z: (K*N, H, A); row k*N + i belongs to observation k
        k = torch.arange(z.shape[0]) // N
        return mu[k].reshape(-1, 1, 1) + std[k].reshape(-1, 1, 1) * z

    v = action_variance(
        sample_fn, torch.randn(K, N, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    assert v.shape == (K,)
    assert torch.allclose(v, std**2, rtol=0.03)


def test_action_variance_of_a_deterministic_policy_is_zero_and_needs_two_samples():
    v = action_variance(lambda z: torch.zeros_like(z), torch.randn(2, 5, 3))
    assert torch.equal(v, torch.zeros(2))
    with pytest.raises(ValueError):
        action_variance(lambda z: z, torch.randn(2, 1, 3))


# ----------------------------------------------------------------------------------------- lambda profile
def test_lambda_profile_of_linear_denoisers():
    sched = make_scheduler("ddim", ScheduleConfig(100))
    x0 = torch.randn(3, 4, 2, dtype=torch.float64)
    ts = [0, 50, 90]
    # x0 ("sample") network D(x) = c x: J_x0 = c I
    rows = lambda_profile(lambda x, t: 0.4 * x, x0, sched, ts, "sample", num_iters=4)
    for r in rows:
        assert r["lambda_max_mean"] == pytest.approx(0.4, abs=1e-6) and r["lambda_min_mean"] == pytest.approx(
            0.4, abs=1e-6
        )
        assert r["violation_frac"] == (0.0 if r["alpha"] > 0.4 else 1.0)
    # epsilon network eps(x) = k x: J_x0 = (1 - sigma k) / alpha
    k = 0.5
    rows = lambda_profile(lambda x, t: k * x, x0, sched, ts, "epsilon", num_iters=4)
    for r in rows:
        want = (1 - r["sigma"] * k) / r["alpha"]
        assert r["lambda_max_mean"] == pytest.approx(want, rel=1e-5)
    assert [r["t"] for r in rows] == ts and rows[0]["alpha"] > rows[-1]["alpha"]


# ----------------------------------------------------------------------------------------- log parsing
LOG = """INFO 2026-11-26 05:23:47 ot_train.py:641 step:25 smpl:800 ep:14 epch:0.72 loss:0.597 grdn:3.841 lr:2.6e-06 updt_s:0.026 data_s:0.102
noise line
INFO 2026-11-26 05:23:51 ot_train.py:641 step:50 smpl:2K ep:29 epch:1.45 loss:0.511 grdn:2.643 lr:7.6e-06 updt_s:0.030 data_s:0.131 contraction_loss:0.002
INFO 2026-11-26 05:23:55 ot_train.py:641 step:75 smpl:2K ep:43 epch:2.17 loss:0.482 updt_s:0.034 data_s:0.128
"""


def test_parse_train_log_and_update_time():
    rows = parse_train_log(LOG)
    assert [r["step"] for r in rows] == [25, 50, 75]
    assert rows[1]["smpl"] == 2000 and rows[1]["contraction_loss"] == 0.002 and rows[0]["lr"] == 2.6e-6
    assert mean_update_seconds(rows) == pytest.approx(0.032)  # first window dropped
    assert mean_update_seconds(rows[:1]) == pytest.approx(0.026)
    assert mean_update_seconds([]) is None


# ----------------------------------------------------------------------------------------- report
def test_replace_section_keeps_other_content(tmp_path):
    p = tmp_path / "RESULTS.md"
    p.write_text("# Title\n\nlead's text\n\n<!-- bench:toy -->\nold\n<!-- /bench:toy -->\n\ntail\n")
    replace_section(p, "bench:toy", "new toy")
    replace_section(p, "bench:matrix", "matrix 1")
    replace_section(p, "bench:matrix", "matrix 2")
    text = p.read_text()
    assert "lead's text" in text and "tail" in text and "old" not in text
    assert text.count("<!-- bench:matrix -->") == 1 and "matrix 2" in text and "matrix 1" not in text
    assert text.index("new toy") < text.index("tail") < text.index("matrix 2")
    replace_section(tmp_path / "fresh.md", "bench:toy", "x")
    assert "<!-- bench:toy -->\nx\n<!-- /bench:toy -->" in (tmp_path / "fresh.md").read_text()


def fake_record(task, policy, fraction, seed, succ, upd=0.01):
    prof = [
        {
            "t": t,
            "alpha": a,
            "sigma": (1 - a * a) ** 0.5,
            "lambda_max_mean": 0.5,
            "lambda_max_max": 0.6,
            "lambda_min_mean": 0.1,
            "violation_frac": 0.0 if policy != "dp" else 1.0,
        }
        for t, a in ((0, 0.99), (50, 0.7), (90, 0.2))
    ]
    return {
        "cell": {"task": task, "policy": policy, "fraction": fraction, "seed": seed},
        "id": Cell(task, policy, fraction, seed).id,
        "eval": {
            "successes": succ,
            "sum_rewards": [float(s) for s in succ],
            "pc_success": 100 * sum(succ) / len(succ),
            "avg_sum_reward": sum(succ) / len(succ),
        },
        "probe": {
            "sep_ratio": {"median": 0.1 if policy != "dp" else 2.0, "p90": 1.0, "mean": 0.5, "n": 8},
            "action_var": {"mean": 0.01 if policy != "dp" else 0.5, "per_obs": [0.01]},
            "lambda_profile": prof,
            "latency_ms": 5.0,
        },
        "sep_over_training": [{"step": 2, "median": 1.0}, {"step": 4, "median": 0.5}],
        "update_s": upd,
        "final_loss": 0.1,
    }


def synthetic_cells():
    cells = []
    for seed in (0, 1):
        cells.append(fake_record("pointmaze", "dp", 1.0, seed, [False] * 10, upd=0.01))
        cells.append(fake_record("pointmaze", "cdp_frobenius", 1.0, seed, [True] * 10, upd=0.012))
        cells.append(fake_record("pointmaze", "cdp_hinge", 1.0, seed, [True] * 3 + [False] * 7, upd=0.05))
    return cells


def test_aggregate_pools_seeds_and_computes_time_ratio_and_verdict():
    agg = aggregate(synthetic_cells())
    a = agg[("pointmaze", "cdp_frobenius", 1.0)]
    assert a["n_episodes"] == 20 and a["success"] == 1.0 and a["ci"] == pytest.approx(wilson_interval(20, 20))
    assert a["time_ratio"] == pytest.approx(1.2) and a["success_per_seed"] == [1.0, 1.0]
    assert agg[("pointmaze", "cdp_hinge", 1.0)]["time_ratio"] == pytest.approx(5.0)
    v = verdict(agg, "pointmaze", 1.0)
    assert "CDP-frobenius vs DP (diffusion): wins" in v and "CDP-hinge vs DP (diffusion): ties" in v


def test_a_default_cdp_cell_reads_its_adaptive_target_from_the_trained_config():
    """A ``cdp`` cell with no contraction flags trains the default, an adaptive gamma: the aggregate takes the
    target from the checkpoint's config and the gamma it reached (the flags would say a fixed weight)."""
    cells = [fake_record("pointmaze", "cdp", 1.0, seed, [True] * 10) for seed in (0, 1)]
    for c, reached in zip(cells, (0.4, 0.6), strict=True):
        c["contraction"] = {"contraction_adaptive_target": 0.6, "contraction_weight_reached": reached}
    a = aggregate(cells)[("pointmaze", "cdp", 1.0)]
    assert a["adaptive_target"] == 0.6 and a["gamma"] == pytest.approx(0.5)


def test_markdown_and_plots(tmp_path):
    agg = aggregate(synthetic_cells())
    prof = {
        "name": "test",
        "tasks": ["pointmaze"],
        "policies": ["dp", "cdp_frobenius", "cdp_hinge"],
        "fractions": [1.0],
        "seeds": [0, 1],
        "steps": 4,
        "batch_size": 4,
        "down_dims": [8],
        "lr": 1e-3,
        "horizon": 16,
        "n_action_steps": 8,
        "dataset_episodes": {"pointmaze": 4},
        "num_inference_steps": 10,
    }
    md = matrix_markdown(
        agg,
        prof,
        {"command": "cdp-bench --quick", "card": "CPU", "date": "today"},
        {"pusht": "no data"},
        ["x"],
    )
    assert (
        "### pointmaze" in md and "| CDP-frobenius | 100 % | 100 [84, 100]" in md and "pusht: skipped" in md
    )
    assert "(pointmaze 4 episodes)" in md and "human demonstrations" not in md
    # a section of its own names its own plots, the human Push-T data, and DP's success over training
    cells = synthetic_cells()
    dp = next(c for c in cells if c["cell"]["policy"] == "dp")
    dp["success_over_training"] = [
        {"step": 2, "successes": [False] * 10},
        {"step": 4, "successes": dp["eval"]["successes"]},
    ]
    md = matrix_markdown(
        aggregate(cells),
        {**prof, "tasks": ["pointmaze", "pusht"]},
        {"command": "cdp-bench --profile standard", "card": "GPU", "date": "today"},
        {},
        [],
        ["benchmarks/plots/standard_gpu/success_vs_fraction.png"],
    )
    assert "Plots: `benchmarks/plots/standard_gpu/success_vs_fraction.png`" in md
    from cdp_plugin.bench.markdown import _gamma

    adaptive = {"penalty": True, "gamma": 0.874, "adaptive_target": 0.3}
    assert _gamma(adaptive) == "adaptive → 0.87 (target 0.3)"
    assert _gamma({"penalty": True, "gamma": 0.2}) == "0.2" and _gamma({"penalty": False}) == "–"
    assert "pusht: Chi et al.'s 206 human demonstrations" in md
    assert f"- `{dp['id']}`: 2: 0 %, 4: " in md
    paths = make_plots(agg, prof, tmp_path)
    assert {p.name for p in paths} == {
        "success_vs_fraction.png",
        "action_variance.png",
        "separation_ratio.png",
        "lambda_max_vs_noise.png",
    }
    assert all(p.stat().st_size > 10_000 for p in paths)


# ----------------------------------------------------------------------------------------- resumability
def tiny_profile(**kw) -> Profile:
    base = dict(
        name="test",
        tasks=["pointmaze", "pusht"],
        policies=["dp", "cdp_frobenius"],
        fractions=[1.0, 0.1],
        seeds=[0],
        dataset_episodes={"pointmaze": 4},
        steps=4,
        batch_size=4,
        down_dims=[16, 32],
        embed_dim=16,
        lr=1e-3,
        eval_episodes={"pointmaze": 1},
        env_episode_length={"pointmaze": 20},
        n_checkpoints=2,
    )
    base.update(kw)
    return Profile(**base)


def test_matrix_skips_finished_cells_and_retries_failed_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_PUSHT_ZARR", str(tmp_path / "absent.zarr"))  # pusht without its data is skipped
    prof = tiny_profile()
    cells = cells_of(prof)
    assert len(cells) == 4 and all(c.task == "pointmaze" for c in cells)  # pusht has no dataset: skipped
    # a matrix directory that already holds the converted Push-T data (carried to a machine without the zarr)
    carried = tmp_path / "carried"
    info = carried / "data" / "pusht_206ep" / "meta" / "info.json"
    info.parent.mkdir(parents=True)
    info.write_text("{}")
    assert {c.task for c in cells_of(prof, carried)} == {"pointmaze", "pusht"}
    assert len(cells_of(prof, tmp_path)) == 4
    done = cells[0]
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / f"{done.id}.json").write_text(
        json.dumps(fake_record("pointmaze", done.policy, done.fraction, 0, [True]))
    )
    calls = []

    def runner(cell, profile, out):
        calls.append(cell.id)
        if cell.policy == "cdp_frobenius" and cell.fraction == 0.1:
            raise RuntimeError("boom")
        return fake_record(cell.task, cell.policy, cell.fraction, cell.seed, [False])

    status = run_matrix(prof, tmp_path, runner=runner, progress=False)
    assert done.id not in calls and len(calls) == 3
    assert status["skipped"] == [done.id] and len(status["done"]) == 2 and len(status["failed"]) == 1
    assert (
        (tmp_path / "logs" / f"{status['failed'][0]}.error.txt").read_text().startswith("RuntimeError: boom")
    )
    # an interrupted / partly failed matrix continues: only the failed cell runs again
    calls.clear()
    status = run_matrix(prof, tmp_path, runner=runner, progress=False)
    assert calls == status["failed"] and len(status["skipped"]) == 3
    assert len(load_cells(tmp_path)) == 3
    assert json.loads((tmp_path / "profile.json").read_text())["steps"] == 4


def test_cli_rejects_unknown_task(tmp_path):
    from cdp_plugin.bench.cli import main

    with pytest.raises(SystemExit):
        main(["--quick", "--tasks", "nope", "--out", str(tmp_path)])


def test_cli_report_only_on_finished_cells(tmp_path):
    from cdp_plugin.bench.cli import main

    out = tmp_path / "m"
    (out / "cells").mkdir(parents=True)
    for r in synthetic_cells():
        (out / "cells" / f"{r['id']}.json").write_text(json.dumps(r))
    res = tmp_path / "RESULTS.md"
    res.write_text("# Benchmarks\n\nlead section\n")
    rc = main(
        [
            "--quick",
            "--report-only",
            "--out",
            str(out),
            "--results",
            str(res),
            "--plots-dir",
            str(tmp_path / "plots"),
        ]
    )
    assert rc == 0
    text = res.read_text()
    assert "lead section" in text and "<!-- bench:matrix -->" in text and "CDP-hinge" in text
    assert len(list((tmp_path / "plots").glob("*.png"))) == 4
    assert Path(res).read_text().count("<!-- /bench:matrix -->") == 1
    # a matrix of another run (a GPU one) goes to a section of its own and leaves this one alone
    before = text
    args = ["--quick", "--report-only", "--out", str(out), "--results", str(res)]
    rc = main([*args, "--plots-dir", str(tmp_path / "plots_gpu"), "--section", "bench:standard-gpu"])
    text = res.read_text()
    assert (
        rc == 0
        and "<!-- bench:standard-gpu -->" in text
        and "CDP-hinge" in text.split("bench:standard-gpu")[1]
    )
    assert before.split("<!-- /bench:matrix -->")[0] == text.split("<!-- /bench:matrix -->")[0]
    with pytest.raises(SystemExit, match="--section must be"):
        main([*args, "--section", "matrix; rm -rf"])


# ----------------------------------------------------------------------------------------- toy flows example
def test_toy_flows_example_runs_small(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "toy_flows.py"
    spec = importlib.util.spec_from_file_location("toy_flows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from cdp_plugin.toy import ToyDenoiser

    model = ToyDenoiser().eval()
    xs = mod.flow(model, torch.randn(7, 2), steps=5)
    assert xs.shape == (6, 7, 2)
    noise, delta = torch.randn(7, 2), 1e-3
    d = mod.pair_distances(model, noise, delta=delta, steps=5)
    # d[0] = |fl(z + delta u) - z| / delta, |u| = 1: rounding z + delta u to float32 moves each component by
    # <= eps/2 |z_i|, so |d[0] - 1| <= eps/2 |z| / delta (+ a few eps for delta u, the norm, the division);
    # tol is twice that. (atol=1e-4 failed for 9 of 300 seeds; this bound held with err/tol <= 0.44.)
    tol = torch.finfo(torch.float32).eps * (noise.norm(dim=1) / delta + 4)
    assert d.shape == (6, 7) and ((d[0] - 1).abs() <= tol).all(), ((d[0] - 1).abs(), tol)
    res = tmp_path / "RESULTS.md"
    res.write_text("# B\n\nother\n")
    assert (
        mod.main(
            [
                "--seeds",
                "0",
                "--steps",
                "20",
                "--n-traj",
                "10",
                "--out",
                str(tmp_path / "t.png"),
                "--results",
                str(res),
            ]
        )
        == 0
    )
    text = res.read_text()
    assert "other" in text and "<!-- bench:toy -->" in text and "| CDP-hinge | 0 |" in text
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_window_label_and_cell_gamma():
    from cdp_plugin.bench.aggregate import cell_gamma, window_label

    assert window_label({"noise_window": [0.0, 1.0], "step_window": [0.0, 1.0]}) == "all"
    assert window_label({"noise_window": [0.0, 0.1], "step_window": [0.0, 1.0]}) == "t/T in [0.0, 0.1]"
    assert window_label({"noise_window": [0.0, 1.0], "step_window": [0.0, 0.3]}) == "steps [0.0, 0.3]"
    cdp = ["--policy.type=cdp"]
    assert cell_gamma({"contraction": {"contraction_weight": 0.2}, "policy_flags": cdp}) == 0.2
    assert cell_gamma({"policy_flags": [*cdp, "--policy.contraction_weight=3"]}) == 3
    assert cell_gamma({"policy_flags": cdp}) == 0.1  # cells run before the default moved
    assert cell_gamma({"policy_flags": ["--policy.type=diffusion"]}) is None


def test_lerobot_cli_found_beside_python_else_on_path(tmp_path, monkeypatch):
    from cdp_plugin.bench import matrix

    assert matrix.lerobot_cli("lerobot-train").is_file()  # this venv's
    monkeypatch.setattr(matrix, "BIN", tmp_path / "empty")
    bindir = tmp_path / "prefix_bin"
    bindir.mkdir()
    script = bindir / "lerobot-eval"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    assert matrix.lerobot_cli("lerobot-eval") == script
    with pytest.raises(FileNotFoundError, match="lerobot-train is neither beside"):
        matrix.lerobot_cli("lerobot-train")
