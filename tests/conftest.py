"""Shared fixtures: small LeRobotDatasets written on the fly, offline environment for the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

VENV_BIN = Path(sys.executable).parent
SMALL_POLICY = [
    "--policy.push_to_hub=false",
    "--policy.device=cpu",
    "--policy.pretrained_backbone_weights=null",
    "--policy.horizon=16",
    "--policy.n_action_steps=8",
    "--policy.down_dims=[32,64]",
    "--policy.diffusion_step_embed_dim=32",
]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2")
    return env


def run_cli(name: str, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run one of LeRobot's console scripts from this venv; on failure show its output."""
    cmd = [str(VENV_BIN / name), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def write_pusht_like_dataset(
    root: Path, n_episodes: int = 4, length: int = 40, image: bool = False, seed: int = 0
):
    """A LeRobotDataset v3 with PushT's keys (state 2, env state 16, action 2; optional 96x96 image).

    Actions follow a smooth function of the state so a policy has something to learn.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "observation.environment_state": {"dtype": "float32", "shape": (16,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    if image:
        features["observation.image"] = {
            "dtype": "image",
            "shape": (96, 96, 3),
            "names": ["height", "width", "channels"],
        }
    ds = LeRobotDataset.create(
        repo_id="local/pusht_like", fps=10, features=features, root=root, use_videos=False
    )
    rng = np.random.default_rng(seed)
    for _ in range(n_episodes):
        pos = rng.uniform(100, 400, size=2).astype(np.float32)
        goal = rng.uniform(100, 400, size=2).astype(np.float32)
        env_state = rng.uniform(0, 512, size=16).astype(np.float32)
        for _ in range(length):
            act = (pos + 0.2 * (goal - pos)).astype(np.float32)
            frame = {
                "observation.state": pos.copy(),
                "observation.environment_state": env_state,
                "action": act,
                "task": "push",
            }
            if image:
                img = np.zeros((96, 96, 3), dtype=np.uint8)
                cx, cy = (pos / 512 * 95).astype(int)
                img[max(cy - 3, 0) : cy + 3, max(cx - 3, 0) : cx + 3] = 255
                frame["observation.image"] = img
            ds.add_frame(frame)
            pos = act + rng.normal(0, 2, size=2).astype(np.float32)
        ds.save_episode()
    ds.finalize()
    return root


@pytest.fixture(scope="session")
def pusht_like_dataset(tmp_path_factory) -> Path:
    return write_pusht_like_dataset(tmp_path_factory.mktemp("data") / "pusht_like")


@pytest.fixture(scope="session")
def pusht_like_image_dataset(tmp_path_factory) -> Path:
    return write_pusht_like_dataset(
        tmp_path_factory.mktemp("data") / "pusht_like_img", n_episodes=2, length=30, image=True
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny nets: one intra-op thread is faster, and immune to OpenMP spin-waits on a shared 2-core box."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
