"""Ready configs parse into the cdp config; the benchmark scripts run end to end on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
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
    out = _run("contraction_cost.py", "--dims", "2", "--steps", "1", "--batch-size", "4", "--no-write")
    for name in (
        "DP (no penalty)",
        "CDP fd_probe (default)",
        "CDP hutchinson",
        "CDP hinge lanczos",
        "official full Jacobian",
    ):
        assert f"| 32 | {name} |" in out
    assert "| 32 | DP (no penalty) | " in out and "1.00x" in out


def test_inference_speed_benchmark_runs():
    out = _run("inference_speed.py", "--repeats", "1", "--no-write")
    assert "DDPM-100" in out and "DPM-Solver++(2M)-10" in out and "speed-up vs DDPM-100" in out
