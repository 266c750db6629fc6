"""End to end through the real CLIs: generate a dataset, ``lerobot-train`` on it, ``lerobot-eval`` the checkpoint.

Tiny sizes (4 training steps, one short evaluation episode): this checks the plumbing between the generators,
LeRobot's training script, the plugin's env registration and LeRobot's evaluation script, not policy quality.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
    "WANDB_MODE": "offline",
}
TRAIN_FLAGS = [
    "--policy.push_to_hub=false",
    "--policy.device=cpu",
    "--policy.pretrained_backbone_weights=null",
    "--wandb.enable=false",
    "--num_workers=0",
    "--policy.horizon=16",
    "--policy.n_action_steps=8",
    "--policy.down_dims=[32,64]",
    "--steps=4",
    "--batch_size=4",
    "--log_freq=2",
    "--save_freq=4",
]
# generator task -> (episodes, env type for lerobot-eval, action dim)
TASKS = {"pointmaze": (4, "pointmaze", 2), "lift": (2, "robosuite_lift", 7), "can": (1, "robosuite_can", 7)}


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{(proc.stdout + proc.stderr)[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for task, (episodes, _, _) in TASKS.items():
        out[task] = root / task
        proc = run(
            [
                sys.executable,
                "-m",
                "cdp_plugin.data.generate",
                task,
                "--episodes",
                episodes,
                "--out",
                out[task],
                "--seed",
                0,
            ]
        )
        assert json.loads(proc.stdout.strip().splitlines()[-1])["episodes_written"] == episodes
    return out


def train(policy_type: str, dataset: Path, out: Path, extra: list[str] = ()) -> Path:
    proc = run(
        [
            BIN / "lerobot-train",
            f"--policy.type={policy_type}",
            f"--dataset.repo_id=local/{dataset.name}",
            f"--dataset.root={dataset}",
            f"--output_dir={out}",
            *TRAIN_FLAGS,
            *extra,
        ]
    )
    log = proc.stdout + proc.stderr
    losses = [float(x) for x in re.findall(r"\bloss:([0-9.eE+-]+|nan|inf)", log)]
    assert losses and all(math.isfinite(x) for x in losses), f"no finite loss logged:\n{log[-3000:]}"
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    return ckpt


def evaluate(ckpt: Path, env_type: str, out: Path, extra: list[str] = ()) -> dict:
    run(
        [
            BIN / "lerobot-eval",
            f"--policy.path={ckpt}",
            "--policy.device=cpu",
            f"--env.type={env_type}",
            "--env.episode_length=8",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            f"--output_dir={out}",
            *extra,
        ]
    )
    info = json.loads((out / "eval_info.json").read_text())
    overall = info["overall"]
    assert overall["n_episodes"] == 1
    assert 0.0 <= overall["pc_success"] <= 100.0
    assert [Path(p).is_file() for p in overall["video_paths"]] == [True]
    return info


@pytest.mark.parametrize("policy_type", ["diffusion", "cdp"])
@pytest.mark.parametrize("task", list(TASKS))
def test_train_on_generated_dataset_then_eval_in_sim(task, policy_type, datasets, tmp_path):
    if policy_type == "cdp":
        pytest.importorskip("cdp_plugin.policy.modeling_cdp")
    _, env_type, action_dim = TASKS[task]
    ckpt = train(policy_type, datasets[task], tmp_path / "train")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["type"] == policy_type
    assert config["output_features"]["action"]["shape"] == [action_dim]
    assert set(config["input_features"]) == {"observation.state", "observation.environment_state"}
    info = evaluate(ckpt, env_type, tmp_path / "eval")
    assert info["per_group"][env_type]["n_episodes"] == 1


def test_pointmaze_images_train_and_eval(tmp_path):
    """The image path: ``--images`` dataset -> diffusion with a ResNet encoder -> eval with ``obs_type=pixels_state``."""
    data = tmp_path / "pm_img"
    run(
        [
            sys.executable,
            "-m",
            "cdp_plugin.data.generate",
            "pointmaze",
            "--episodes",
            2,
            "--images",
            "--out",
            data,
        ]
    )
    ckpt = train("diffusion", data, tmp_path / "train", ["--policy.crop_shape=[84,84]"])
    config = json.loads((ckpt / "config.json").read_text())
    assert config["input_features"]["observation.image"]["shape"] == [3, 96, 96]
    evaluate(ckpt, "pointmaze", tmp_path / "eval", ["--env.obs_type=pixels_state"])
