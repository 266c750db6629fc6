"""Ready configs parse into the cdp config; the benchmark scripts run end to end on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import draccus
import pytest
from conftest import cli_env, run_cli

import lerobot_policy_cdp  # noqa: F401
from cdp_plugin.policy import ContractiveDiffusionConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "policy_configs" / "lerobot").glob("*.json")), ids=lambda p: p.name
)
def test_lerobot_configs_parse(path):
    cfg = json.loads(path.read_text())
    policy = dict(cfg["policy"])
    assert policy.pop("type") == "cdp"
    parsed = draccus.decode(ContractiveDiffusionConfig, policy)
    assert parsed.contraction_config().weight >= 0


def test_small_cpu_config_trains(pusht_like_dataset, tmp_path):
    run_cli(
        "lerobot-train",
        f"--config_path={ROOT / 'policy_configs/lerobot/cdp_state_small_cpu.json'}",
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={tmp_path / 'out'}",
        "--steps=2",
        "--save_freq=2",
    )
    assert (tmp_path / "out" / "checkpoints" / "000002" / "pretrained_model" / "model.safetensors").is_file()


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_contraction_cost_benchmark_runs():
    out = _run(
        "contraction_cost.py",
        *("--dims", "2,7", "--official-dims", "32", "--steps", "1", "--batch-size", "4", "--no-write"),
    )
    assert "| 112 | CDP fd_probe, fixed γ |" in out and "| 112 | official full Jacobian |" not in out
    assert "contraction_cost.py --dims 2,7 --official-dims 32" in out  # the header names the run's flags
    for name in (
        "DP (no penalty)",
        "CDP fd_probe, fixed γ",
        "CDP fd_probe + prepass (adaptive γ's measuring step)",
        "CDP default: adaptive γ (fd_probe, prepass every 10th step; derived)",
        "CDP hutchinson",
        "CDP hinge lanczos",
        "official full Jacobian",
    ):
        assert f"| 32 | {name} |" in out
    assert "| 32 | DP (no penalty) | " in out and "1.00x" in out


def test_inference_speed_benchmark_runs():
    out = _run("inference_speed.py", "--repeats", "1", "--no-write")
    assert "DDPM-100" in out and "DPM-Solver++(2M)-10" in out and "speed-up vs DDPM-100" in out


def test_pusht_study_variants_and_report(tmp_path, monkeypatch):
    """``pusht_study.py --variant``: a cell of a variant trains with its flags, evaluates with DDIM through the
    right flag for its base, and the report names it with its flags beside the built-in policies."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pusht_study.py"
    spec = importlib.util.spec_from_file_location("pusht_study", path)
    ps = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pusht_study", ps)  # its dataclasses look their module up
    spec.loader.exec_module(ps)
    from cdp_plugin.bench.matrix import parse_variant

    study = ps.Study(variants=dict([parse_variant("g0.05=cdp:--policy.contraction_weight=0.05")]))
    assert ps.policy_flags(study, "g0.05") == ["--policy.type=cdp", "--policy.contraction_weight=0.05"]
    assert ps.eval_sampler(study, "g0.05") == ["--policy.sampler=ddim"]
    study.variants["e"] = ["--policy.type=diffusion", "--policy.horizon=16"]
    assert ps.eval_sampler(study, "e") == ["--policy.noise_scheduler_type=DDIM"]
    with pytest.raises(ValueError, match="unknown policy"):
        ps.policy_flags(study, "nope")
    assert "--policy.device=cuda" in ps.Study(device="cuda").train_flags()

    out = tmp_path / "study"
    (out / "cells").mkdir(parents=True)
    ev = {"successes": [True, False], "max_rewards": [1.0, 0.5], "pc_success": 50.0, "avg_max_reward": 0.75}
    for pol, st in (("dp_x0", ps.Study()), ("g0.05", study)):
        rec = {
            "id": ps.cell_id(pol, 1.0, 0),
            "policy": pol,
            "fraction": 1.0,
            "seed": 0,
            "episodes": None,
            "curve": [{"step": 3000, **ev}],
            "final": {"step": 3000, **ev},
            "study": asdict(st),
        }
        (out / "cells" / f"{rec['id']}.json").write_text(json.dumps(rec))
    # the contraction probe of the last checkpoints: a table against DP-x0, seed ranges compared
    for pol, viol, var in (("dp_x0", 0.5, 0.02), ("g0.05", 0.1, 0.004)):
        path = out / "cells" / f"{ps.cell_id(pol, 1.0, 0)}.json"
        rec = json.loads(path.read_text())
        rec["probe"] = {"viol_all": viol, "viol_low": viol, "action_var": var, "sep_median": 0.5, "n_obs": 16}
        path.write_text(json.dumps(rec))
    res = tmp_path / "RESULTS.md"
    res.write_text("# R\n")
    assert ps.main(["--out", str(out), "--report", "--results", str(res)]) == 0
    probe_row = next(r for r in res.read_text().splitlines() if r.startswith("| g0.05 (") and "0.20×" in r)
    assert probe_row.endswith("| lower / lower |"), probe_row
    text = res.read_text()
    assert "| g0.05 (`cdp` --policy.contraction_weight=0.05) | 100 % | 0 | 1/2 = 50 %" in text
    assert "| DP-x0 (`cdp`, no penalty) | 100 % | 0 |" in text and "<!-- bench:pusht -->" in text
    with pytest.raises(SystemExit, match="expected name=base"):
        ps.main(["--out", str(out), "--variant", "no-equals-sign"])
    # a second study writes its own section and leaves the first alone; a variant at cdp's default says so
    from cdp_plugin.contraction import ContractionConfig

    study.variants["gd"] = ["--policy.type=cdp", f"--policy.contraction_weight={ContractionConfig().weight}"]
    assert ps.label(asdict(study), "gd").startswith("CDP at cdp's default, gd")
    assert ps.main(["--out", str(out), "--report", "--results", str(res), "--section", "bench:pusht-8k"]) == 0
    text2 = res.read_text()
    assert (
        "<!-- bench:pusht-8k -->" in text2 and text2.count("| DP-x0 (`cdp`, no penalty) | 100 % | 0 |") == 2
    )
    with pytest.raises(SystemExit, match="--section"):
        ps.main(["--out", str(out), "--report", "--section", "pusht"])
    # --plot: success and variance against the gamma each cell's checkpoint config says it trained with
    (out / "study.json").write_text(json.dumps(asdict(study)))
    for pol, cfg in (
        ("dp_x0", {"type": "cdp", "contraction_loss": "none", "contraction_weight": 0.1}),
        ("g0.05", {"type": "cdp", "contraction_loss": "frobenius", "contraction_weight": 0.05}),
    ):
        ck = out / "runs" / ps.cell_id(pol, 1.0, 0) / "train" / "checkpoints" / "003000" / "pretrained_model"
        ck.mkdir(parents=True)
        (ck / "config.json").write_text(json.dumps({**cfg, "contraction_estimator": "fd_probe"}))
        (ck / "model.safetensors").write_bytes(b"")
    agg = ps.penalty_agg(out, "T")
    g, x0 = agg[("T", "g0.05", 1.0)], agg[("T", "dp_x0", 1.0)]
    assert (g["penalty"], g["gamma"], g["loss"], g["success"]) == (True, 0.05, "frobenius", 0.5)
    assert g["action_var_per_seed"] == [0.004] and not x0["penalty"] and x0["ci"][0] < 0.5 < x0["ci"][1]
    png = tmp_path / "plots" / "pusht_penalty_strength.png"
    assert ps.main(["--out", str(out), "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000


def test_gradient_share_reads_pusht_study_cells(tmp_path, monkeypatch):
    """``gradient_share.py`` takes a ``pusht_study.py`` directory beside a cdp-bench one: a study cell's fraction,
    seed and dataset come from its own layout, and ``--matrix`` / ``--task`` must pair up."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gradient_share.py"
    spec = importlib.util.spec_from_file_location("gradient_share", path)
    gs = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gradient_share", gs)
    spec.loader.exec_module(gs)
    study_cell = {"id": "pusht__g0.1__f100__s2", "policy": "g0.1", "fraction": 1.0, "seed": 2}
    assert gs.cell_info(study_cell, tmp_path) == (1.0, 2, tmp_path / "data" / "pusht_keypoints")
    bench_cell = {"id": "x", "cell": {"fraction": 0.1, "seed": 1}, "dataset": "/d/pointmaze"}
    assert gs.cell_info(bench_cell, tmp_path) == (0.1, 1, Path("/d/pointmaze"))
    with pytest.raises(SystemExit, match="give one task each"):
        gs.main(
            ["--matrix", str(tmp_path), "--matrix", str(tmp_path), "--task", "pusht", "--policies", "g0.1"]
        )
    with pytest.raises(SystemExit, match="no finished cells"):
        gs.main(["--matrix", str(tmp_path), "--task", "pusht", "--policies", "g0.1"])

    # an adaptive gamma lives in a buffer: the share is measured at the gamma the checkpoint reached, and the
    # buffer (which each training step moves) is left as it was
    import torch
    from test_reliability import tiny_policy

    policy = tiny_policy(contraction_adaptive_target=0.3, contraction_weight=0.4).train()
    batch = {
        "observation.state": torch.randn(8, 2, 2),
        "observation.environment_state": torch.randn(8, 2, 16),
        "action": torch.rand(8, 16, 2) * 2 - 1,
        "action_is_pad": torch.zeros(8, 16, dtype=torch.bool),
    }
    g0 = gs._grad(policy, batch, 0.0)
    assert policy.diffusion.current_weight() == pytest.approx(0.4)
    g1 = gs._grad(policy, batch, 0.4)
    assert policy.diffusion.current_weight() == pytest.approx(0.4)
    assert (g1 - g0).norm() > 1e-6 * g0.norm()  # gamma 0 really removed the penalty
