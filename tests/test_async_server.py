"""LeRobot's async gRPC inference serves ``cdp``: policy server + LeRobot's own RobotClient, on loopback.

What is real: LeRobot 0.6.1's ``PolicyServer`` (started as ``cdp-policy-server``, which imports the plugin --
registering ``cdp`` and adding it to ``lerobot.async_inference.constants.SUPPORTED_POLICIES`` -- and then
runs LeRobot's ``serve`` unchanged), gRPC over 127.0.0.1, LeRobot's ``RobotClient`` (handshake, policy
spec, observation streaming, action-chunk receiver and control loop threads), the checkpoint's saved
processors, and a cdp checkpoint trained for a few optimiser steps on a dataset written here.

What stands in for hardware: ``ReplayRobot`` (below), whose observations are the recorded frames of that
dataset (state x, y and a 48x48 camera image) and which records the actions the control loop sends it.

Every wait is bounded; the server binds 127.0.0.1 only and is killed at the end.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("grpc", reason="grpcio is not installed: pip install 'lerobot_policy_cdp[async]'")

from lerobot.robots.config import RobotConfig  # noqa: E402
from lerobot.robots.robot import Robot  # noqa: E402

import lerobot_policy_cdp  # noqa: E402,F401  (registers cdp, also with the async server's list)

VENV_BIN = Path(sys.executable).parent
IMG = (48, 48, 3)
ACTIONS_PER_CHUNK = 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------------
# data and a briefly trained cdp checkpoint
# ---------------------------------------------------------------------------------------------------------


def _write_dataset(root: Path, n_episodes: int = 2, length: int = 30, seed: int = 0):
    """State (x, y), a camera image showing the point, action = a step towards a goal."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "observation.images.front": {
            "dtype": "image",
            "shape": IMG,
            "names": ["height", "width", "channels"],
        },
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    ds = LeRobotDataset.create(repo_id="local/replay", fps=10, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(seed)
    for _ in range(n_episodes):
        pos, goal = rng.uniform(0.2, 0.8, size=2), rng.uniform(0.2, 0.8, size=2)
        for _ in range(length):
            act = pos + 0.2 * (goal - pos)
            img = np.zeros(IMG, dtype=np.uint8)
            cx, cy = (pos * (IMG[0] - 1)).astype(int)
            img[max(cy - 2, 0) : cy + 2, max(cx - 2, 0) : cx + 2] = 255
            ds.add_frame(
                {
                    "observation.state": pos.astype(np.float32),
                    "observation.images.front": img,
                    "action": act.astype(np.float32),
                    "task": "reach",
                }
            )
            pos = act + rng.normal(0, 0.01, size=2)
        ds.save_episode()
    ds.finalize()
    return ds


def _train_checkpoint(ds, out: Path, steps: int = 3) -> Path:
    """A few optimiser steps of cdp with LeRobot's factories, saved as lerobot-train saves a checkpoint."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_policy, make_policy_config, make_pre_post_processors

    cfg = make_policy_config(
        "cdp",
        push_to_hub=False,
        device="cpu",
        pretrained_backbone_weights=None,
        horizon=16,
        n_action_steps=ACTIONS_PER_CHUNK,
        down_dims=(32, 64),
        diffusion_step_embed_dim=32,
        num_inference_steps=4,
    )
    policy = make_policy(cfg, ds_meta=ds.meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=ds.meta.stats)
    train = LeRobotDataset(ds.repo_id, root=ds.root, delta_timestamps=resolve_delta_timestamps(cfg, ds.meta))
    loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, num_workers=0)
    opt = torch.optim.Adam(policy.get_optim_params(), lr=1e-3)
    policy.train()
    for _, batch in zip(range(steps), loader):
        loss, info = policy.forward(pre(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss) and info["contraction_loss"] >= 0
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# the robot stand-in
# ---------------------------------------------------------------------------------------------------------


@RobotConfig.register_subclass("cdp_test_replay")
@dataclass(kw_only=True)
class ReplayRobotConfig(RobotConfig):
    dataset_root: str = ""


class ReplayRobot(Robot):
    """Observations are recorded dataset frames (in order); actions sent to it are recorded."""

    config_class = ReplayRobotConfig
    name = "cdp_test_replay"

    def __init__(self, config: ReplayRobotConfig, frames: list[dict]):
        super().__init__(config)
        self.config = config
        self.frames, self.i, self.sent, self._connected = frames, 0, [], False

    @cached_property
    def observation_features(self) -> dict:
        return {"x": float, "y": float, "front": IMG}

    @cached_property
    def action_features(self) -> dict:
        return {"x": float, "y": float}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        self._connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict:
        f = self.frames[self.i % len(self.frames)]
        self.i += 1
        return dict(f)

    def send_action(self, action: dict) -> dict:
        self.sent.append(dict(action))
        return action

    def disconnect(self) -> None:
        self._connected = False


def _frames(ds, n: int = 30) -> list[dict]:
    """The first episode's recorded frames, as the robot would report them (floats, HxWx3 uint8)."""
    out = []
    for i in range(n):
        item = ds[i]
        state = item["observation.state"].numpy()
        img = (item["observation.images.front"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out.append({"x": float(state[0]), "y": float(state[1]), "front": img})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"cdp-policy-server exited with {proc.returncode}:\n{proc.stdout.read()[-6000:]}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"cdp-policy-server did not listen on 127.0.0.1:{port} within {timeout} s")


def test_plugin_import_registers_cdp_with_async_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # importing LeRobot's async modules creates ./logs/
    from lerobot.async_inference import constants, policy_server

    assert "cdp" in constants.SUPPORTED_POLICIES
    assert policy_server.SUPPORTED_POLICIES is constants.SUPPORTED_POLICIES  # the list the server checks
    from cdp_plugin.register import register_async_inference

    n = len(constants.SUPPORTED_POLICIES)
    assert register_async_inference() and len(constants.SUPPORTED_POLICIES) == n  # idempotent


def test_policy_server_serves_cdp_to_lerobot_robot_client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # LeRobot's async loggers write ./logs/
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    _write_dataset(tmp_path / "data")
    ds = LeRobotDataset("local/replay", root=tmp_path / "data")
    ckpt = _train_checkpoint(ds, tmp_path / "pretrained_model")
    frames = _frames(ds)
    a_min = np.asarray(ds.meta.stats["action"]["min"], dtype=np.float64)
    a_max = np.asarray(ds.meta.stats["action"]["max"], dtype=np.float64)

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [
            str(VENV_BIN / "cdp-policy-server"),
            "--host=127.0.0.1",
            f"--port={port}",
            "--fps=30",
            "--inference_latency=0",
            "--obs_queue_timeout=1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_port(port, server, timeout=120)
        from lerobot.async_inference import robot_client
        from lerobot.async_inference.configs import RobotClientConfig

        robot = ReplayRobot(ReplayRobotConfig(id="replay", calibration_dir=tmp_path / "calib"), frames)
        monkeypatch.setattr(robot_client, "make_robot_from_config", lambda cfg: robot)
        cfg = RobotClientConfig(
            policy_type="cdp",
            pretrained_name_or_path=str(ckpt),
            robot=robot.config,
            actions_per_chunk=ACTIONS_PER_CHUNK,
            server_address=f"127.0.0.1:{port}",
            policy_device="cpu",
            fps=30,
            chunk_size_threshold=0.5,
            task="reach",
        )
        client = robot_client.RobotClient(cfg)
        chunks: list[list] = []
        aggregate = client._aggregate_action_queues

        def record(incoming, fn=None):  # every action chunk the receiver thread gets from the server
            chunks.append(list(incoming))
            return aggregate(incoming, fn)

        client._aggregate_action_queues = record
        assert client.start(), "handshake / SendPolicyInstructions failed"
        receiver = threading.Thread(target=client.receive_actions, daemon=True)
        control = threading.Thread(target=client.control_loop, args=("reach",), daemon=True)
        receiver.start()
        control.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(chunks) < 2 or len(robot.sent) < ACTIONS_PER_CHUNK + 2):
            assert server.poll() is None, f"server died:\n{server.stdout.read()[-6000:]}"
            time.sleep(0.1)
        client.stop()
        receiver.join(timeout=15)
        control.join(timeout=15)
    finally:
        server.kill()
        log = server.communicate(timeout=30)[0]
    assert len(chunks) >= 2 and len(robot.sent) >= ACTIONS_PER_CHUNK + 2, (
        len(chunks),
        len(robot.sent),
        log[-6000:],
    )
    assert "Policy type: cdp" in log
    for chunk in chunks:
        assert len(chunk) == ACTIONS_PER_CHUNK
        acts = torch.stack([a.get_action() for a in chunk]).double().numpy()
        assert acts.shape == (ACTIONS_PER_CHUNK, 2) and np.isfinite(acts).all()
        # postprocessed (unnormalised) actions: x0 clipped to [-1, 1] maps into the dataset's action range
        tol = 1e-4 * (a_max - a_min)
        assert (acts >= a_min - tol).all() and (acts <= a_max + tol).all(), (acts, a_min, a_max)
    assert [c[0].get_timestep() for c in chunks] == sorted(c[0].get_timestep() for c in chunks)
    for sent in robot.sent:
        assert set(sent) == {"x", "y"} and all(math.isfinite(v) for v in sent.values())
