"""One tiny matrix cell end to end: generate a dataset, ``lerobot-train`` (4 steps), ``lerobot-eval``, probe (issue 7),
run as a policy *variant* with its own flags, with success vs sampling steps and mode coverage (issue 13.3)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from test_bench_metrics import tiny_profile

from cdp_plugin.bench.matrix import load_cells, parse_variant, run_matrix
from cdp_plugin.bench.probe import ProbeSettings

REPO = Path(__file__).resolve().parents[1]


def test_tiny_cell_end_to_end_and_resume(tmp_path):
    name, flags = parse_variant(
        "g3w=cdp:--policy.contraction_weight=3,--policy.contraction_noise_window=[0,0.5]"
    )
    prof = tiny_profile(
        tasks=["pointmaze"],
        policies=[name],
        fractions=[0.5],
        seeds=[0],
        variants={name: flags},
        eval_steps=[1],
        mode_episodes=2,
        eval_jobs=2,  # the main and the 1-step evaluation side by side
    )
    settings = ProbeSettings(
        n_obs=2,
        n_samples=4,
        n_sep=2,
        n_lambda=2,
        lanczos_iters=4,
        latency_repeats=2,
        step_time_repeats=2,
        step_time_batch=2,
    )

    from cdp_plugin.bench import matrix

    def runner(cell, profile, out):
        return matrix.run_cell(cell, profile, out, probe_settings=settings)

    status = run_matrix(prof, tmp_path, runner=runner, progress=False, keep_going=False)
    assert len(status["done"]) == 1, status
    (rec,) = load_cells(tmp_path)
    assert rec["episodes"] is not None and len(rec["episodes"]) == 2  # 50 % of 4 episodes
    assert "--dataset.episodes=[" in rec["train_cmd"] and "--policy.sampler=ddim" in rec["eval_cmd"]
    assert "--policy.contraction_weight=3" in rec["train_cmd"]
    assert "--policy.contraction_noise_window=[0,0.5]" in rec["train_cmd"]
    cfg = json.loads(
        next(
            (tmp_path / "runs" / rec["id"] / "train" / "checkpoints").glob("*/pretrained_model/config.json")
        ).read_text()
    )
    assert cfg["contraction_weight"] == 3 and cfg["contraction_noise_window"] == [0, 0.5]
    assert rec["contraction"]["contraction_weight"] == 3  # recorded from the checkpoint, read by the report
    assert [r["step"] for r in rec["train_log"]][-1] == 4 and rec["update_s"] > 0
    assert len(rec["eval"]["successes"]) == 1
    assert set(rec["eval_by_steps"]) == {"1", "10"} and rec["eval_by_steps"]["1"]["num_inference_steps"] == 1
    assert rec["modes"]["n_episodes"] == 2 and len(rec["modes"]["successes"]) == 2
    p = rec["probe"]
    assert p["sep_ratio"]["n"] == 4 and math.isfinite(p["sep_ratio"]["median"])
    assert len(p["action_var"]["per_obs"]) == 2 and p["action_var"]["mean"] >= 0
    assert len(p["lambda_profile"]) == 10 and p["latency_ms"] > 0 and p["eval_sampler"] == "ddim-10"
    assert all(r["lower"] < 0 < r["upper"] and r["n"] == 2 for r in p["lambda_profile"])
    assert p["step_time"]["ratio"] > 0 and p["step_time"]["dp_s"] > 0
    assert [r["step"] for r in rec["sep_over_training"]] == [2, 4]
    assert not (tmp_path / "runs" / rec["id"] / "eval" / "videos").exists()
    # rerun: the finished cell is skipped, nothing is retrained
    mtime = (tmp_path / "cells" / f"{rec['id']}.json").stat().st_mtime
    status = run_matrix(prof, tmp_path, runner=runner, progress=False)
    assert status["skipped"] == [rec["id"]] and not status["done"]
    assert (tmp_path / "cells" / f"{rec['id']}.json").stat().st_mtime == mtime
    assert json.loads((tmp_path / "profile.json").read_text())["name"] == "test"

    # benchmarks/gradient_share.py on the same cell: the penalty's share of the gradient at mid-training
    results = tmp_path / "RESULTS.md"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gradient_share.py"), "--matrix", str(tmp_path)]
        + ["--policies", name, "--batches", "2", "--batch-size", "2", "--results", str(results)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    row = next(
        line
        for line in results.read_text().splitlines()
        if line.startswith("| pointmaze | ") and f"| {name} |" in line
    )
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[3:7] == ["frobenius", "3", "32", "2"], cols  # loss, gamma, D, mid checkpoint (of 2, 4)
    share = float(cols[8].split(" %")[0])
    assert 0 < share < 1e4 and math.isfinite(share), out


def test_dp_plateau_evaluations_run_side_by_side(tmp_path):
    """``plateau_evals``: DP's every checkpoint is evaluated (``eval_jobs`` at a time); the last checkpoint's is
    the main evaluation itself, not a second run."""
    prof = tiny_profile(
        tasks=["pointmaze"], policies=["dp"], fractions=[1.0], plateau_evals=True, eval_jobs=3, eval_steps=[1]
    )
    settings = ProbeSettings(
        n_obs=2, n_samples=2, n_sep=2, n_lambda=2, lanczos_iters=2, step_time_repeats=1, step_time_batch=2
    )
    from cdp_plugin.bench import matrix

    status = run_matrix(
        prof,
        tmp_path,
        runner=lambda c, p, o: matrix.run_cell(c, p, o, probe_settings=settings),
        progress=False,
        keep_going=False,
    )
    assert len(status["done"]) == 1, status
    (rec,) = load_cells(tmp_path)
    run_dir = tmp_path / "runs" / rec["id"]
    assert [r["step"] for r in rec["success_over_training"]] == [2, 4]
    assert rec["success_over_training"][-1]["successes"] == rec["eval"]["successes"]
    assert (run_dir / "eval_at_000002" / "eval_info.json").is_file()
    assert not (run_dir / "eval_at_000004").exists()  # the main evaluation serves the last checkpoint
    assert "--policy.noise_scheduler_type=DDIM" in rec["eval_cmd"]
    assert set(rec["eval_by_steps"]) == {"1", "10"}
