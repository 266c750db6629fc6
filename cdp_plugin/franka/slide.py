"""The simulated Franka "Slide" task: push a puck to a target on the table, on franky-sim.

Everything goes through the LeRobot ``franka`` robot (``FrankaConfig(sim="slide")``), i.e. through franky
and the libfranka protocol: the scripted expert records a LeRobotDataset with exactly the features
``lerobot-rollout --robot.type=franka --robot.sim=slide`` builds, and :func:`evaluate_policy` runs a
trained LeRobot policy the way ``lerobot-rollout``'s sync engine does, with per-episode resets.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config_franka import FrankaConfig, FrankySimCameraConfig

logger = logging.getLogger(__name__)

TASK_TEXT = "slide the red puck onto the green target"
BLOCK_KEYS = ("block_x.pos", "block_y.pos")
FPS = 10


def slide_robot_config(host: str = "127.0.0.1", seed: int = 0, camera: bool = True, **kw) -> FrankaConfig:
    cams = {"top": FrankySimCameraConfig(host=host)} if camera else {}
    return FrankaConfig(ip=host, sim="slide", sim_seed=seed, cameras=cams, **kw)


def rollout_features(robot) -> dict:
    """Dataset features exactly as ``lerobot-rollout`` derives them from the robot (same key filter)."""
    from lerobot.utils.feature_utils import hw_to_dataset_features

    obs_hw = {
        k: v
        for k, v in robot.observation_features.items()
        if isinstance(v, tuple) or (v is float and k.endswith((".pos", ".vel")))
    }
    act_hw = {k: v for k, v in robot.action_features.items() if k.endswith((".pos", ".vel"))}
    return {
        **hw_to_dataset_features(act_hw, "action", use_video=False),
        **hw_to_dataset_features(obs_hw, "observation", use_video=False),
    }


@dataclass
class SlideExpert:
    """Closed-loop scripted pusher (``ee_pos`` actions): go behind the puck, push it along puck->target."""

    block_radius: float = 0.03
    finger_radius: float = 0.012
    push_z: float = 0.025
    hover_z: float = 0.10
    travel_step: float = 0.03
    push_step: float = 0.02
    target_xy: tuple[float, float] = (0.55, 0.12)
    done_radius: float = 0.012

    def __call__(self, obs: dict) -> dict:
        e = np.array([obs["ee_x.pos"], obs["ee_y.pos"], obs["ee_z.pos"]])
        b = np.array([obs["block_x.pos"], obs["block_y.pos"]])
        g = np.asarray(self.target_xy)
        to_goal = g - b
        dist = float(np.linalg.norm(to_goal))
        u = to_goal / max(dist, 1e-9)
        r = self.block_radius + self.finger_radius
        contact = b - r * u
        behind = b - (r + 0.03) * u
        rel = e[:2] - b
        along = float(rel @ u)
        lateral = float(np.linalg.norm(rel - along * u))
        if dist < self.done_radius:
            goal = np.array([e[0], e[1], self.hover_z])  # done: lift off
        elif e[2] > self.push_z + 0.02:  # travelling high
            if np.linalg.norm(e[:2] - behind) > 0.015:
                goal = np.array([behind[0], behind[1], self.hover_z])
            else:
                goal = np.array([behind[0], behind[1], self.push_z])
        elif along < -r + 0.01 and lateral < 0.02:  # low, behind the puck and aligned: push
            step = min(self.push_step, dist)
            goal = np.array([*(contact + step * u), self.push_z])
        elif along < -(r + 0.005):  # low and behind, but off the push line: slide over behind it
            goal = np.array([behind[0], behind[1], self.push_z])
        else:  # low next to / in front of the puck: lift
            goal = np.array([e[0], e[1], self.hover_z])
        d = goal - e
        n = float(np.linalg.norm(d))
        if n > self.travel_step:
            goal = e + d * (self.travel_step / n)
        return {"ee_x.pos": goal[0], "ee_y.pos": goal[1], "ee_z.pos": goal[2], "gripper.pos": 0.0}


def reset_episode(robot, block_xy=None, home: bool = False) -> tuple[float, float]:
    """Lift, go to the start pose (through the joint home pose when ``home``), close the gripper and put
    the puck at ``block_xy`` (random when None)."""
    obs = robot.get_observation()
    if obs["ee_z.pos"] < 0.12:
        robot.move_ee([obs["ee_x.pos"], obs["ee_y.pos"], 0.15])
    if home:
        robot.move_home()
    sim = robot.scene.sim  # the SlideScene the robot hosts (slide_robot_config)
    robot.move_ee(sim.task.start_xyz)
    robot.gripper_move(0.0)
    return sim.place_block(block_xy)


def run_episode(robot, act_fn, max_steps: int = 80, fps: int = FPS, on_frame=None, settle_steps: int = 3):
    """Run one episode at ``fps``; returns dict(success, steps, final_distance, wall_s)."""
    sim = robot.scene.sim
    dt = 1.0 / fps
    t_start = time.perf_counter()
    success_at = None
    steps = 0
    for steps in range(1, max_steps + 1):
        t0 = time.perf_counter()
        obs = robot.get_observation()
        action = act_fn(obs)
        sent = robot.send_action(action)
        if on_frame is not None:
            on_frame(obs, sent)
        bxy = np.array([obs["block_x.pos"], obs["block_y.pos"]])
        if sim.is_success(bxy):
            success_at = steps if success_at is None else success_at
            if steps - success_at >= settle_steps:
                break
        else:
            success_at = None
        rest = dt - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
    robot.wait_until_still(5.0)
    time.sleep(0.3)
    d = sim.distance_to_target()
    return {
        "success": d <= sim.task.success_radius,
        "steps": steps,
        "final_distance": d,
        "wall_s": time.perf_counter() - t_start,
    }


def record_dataset(
    root: str | Path,
    n_episodes: int,
    repo_id: str = "local/franka_slide",
    host: str = "127.0.0.1",
    seed: int = 0,
    max_steps: int = 80,
    camera: bool = True,
    only_success: bool = True,
) -> dict:
    """Record scripted-expert episodes through the franka robot into a LeRobotDataset at ``root``."""
    from lerobot.datasets import LeRobotDataset
    from lerobot.robots import make_robot_from_config
    from lerobot.utils.feature_utils import build_dataset_frame

    cfg = slide_robot_config(host, seed, camera, calibration_dir=Path(root).parent / ".calibration")
    robot = make_robot_from_config(cfg)
    rng = np.random.default_rng(seed)
    results = []
    robot.connect()
    try:
        features = rollout_features(robot)
        ds = LeRobotDataset.create(
            repo_id, FPS, features=features, root=root, robot_type=robot.name, use_videos=False
        )
        expert = SlideExpert()
        t = robot.scene.sim.task
        for ep in range(n_episodes):
            reset_episode(robot, (rng.uniform(*t.block_x_range), rng.uniform(*t.block_y_range)), home=ep == 0)
            frames = []

            def on_frame(obs, sent):
                frame = {
                    **build_dataset_frame(features, obs, "observation"),
                    **build_dataset_frame(features, sent, "action"),
                    "task": TASK_TEXT,
                }
                frames.append(frame)  # noqa: B023  (called within this iteration)

            res = run_episode(robot, expert, max_steps=max_steps, on_frame=on_frame)
            results.append(res)
            logger.info("expert episode %d: %s", ep, res)
            if res["success"] or not only_success:
                for f in frames:
                    ds.add_frame(f)
                ds.save_episode()
            else:
                ds.clear_episode_buffer() if hasattr(ds, "clear_episode_buffer") else None
        ds.finalize()
    finally:
        robot.disconnect()
    n_ok = sum(r["success"] for r in results)
    return {
        "episodes": n_episodes,
        "successes": n_ok,
        "success_rate": n_ok / max(n_episodes, 1),
        "saved_episodes": n_ok if only_success else n_episodes,
        "results": results,
    }


def to_state_dataset(
    src_root: str | Path, dst_root: str | Path, repo_id: str = "local/franka_slide_state"
) -> dict:
    """Copy a recorded Slide dataset into a low-dimensional variant for quick CPU training.

    ``observation.state`` keeps the robot's proprioception, ``observation.environment_state`` holds the
    puck position (the layout LeRobot's state-based PushT uses) and the camera is dropped.
    :func:`evaluate_policy` builds the same two vectors from the robot observation.
    """
    import json

    import pyarrow.parquet as pq
    from lerobot.datasets import LeRobotDataset

    src_root = Path(src_root)
    info = json.loads((src_root / "meta" / "info.json").read_text())
    names = info["features"]["observation.state"]["names"]
    robot_idx = [i for i, n in enumerate(names) if n not in BLOCK_KEYS]
    block_idx = [names.index(n) for n in BLOCK_KEYS]
    features = {
        "action": info["features"]["action"],
        "observation.state": {
            "dtype": "float32",
            "shape": (len(robot_idx),),
            "names": [names[i] for i in robot_idx],
        },
        "observation.environment_state": {"dtype": "float32", "shape": (2,), "names": list(BLOCK_KEYS)},
    }
    ds = LeRobotDataset.create(
        repo_id,
        info["fps"],
        features=features,
        root=dst_root,
        robot_type=info["robot_type"],
        use_videos=False,
    )
    cols = ["action", "observation.state", "episode_index"]
    tables = [pq.read_table(p, columns=cols) for p in sorted((src_root / "data").rglob("*.parquet"))]
    n_ep = 0
    for t in tables:
        d = t.to_pydict()
        ep_prev = None
        for a, st, ep in zip(d["action"], d["observation.state"], d["episode_index"], strict=True):
            if ep_prev is not None and ep != ep_prev:
                ds.save_episode()
                n_ep += 1
            ep_prev = ep
            st = np.asarray(st, dtype=np.float32)
            ds.add_frame(
                {
                    "action": np.asarray(a, dtype=np.float32),
                    "observation.state": st[robot_idx],
                    "observation.environment_state": st[block_idx],
                    "task": TASK_TEXT,
                }
            )
        if ep_prev is not None:
            ds.save_episode()
            n_ep += 1
    ds.finalize()
    return {"episodes": n_ep}


def evaluate_expert(n_episodes: int, host: str = "127.0.0.1", seed: int = 0, max_steps: int = 80) -> dict:
    """Success rate of the scripted expert (no camera, nothing recorded)."""
    import tempfile

    from lerobot.robots import make_robot_from_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = slide_robot_config(host, seed, camera=False, calibration_dir=Path(tmp))
        robot = make_robot_from_config(cfg)
        rng = np.random.default_rng(seed)
        results = []
        robot.connect()
        try:
            t = robot.scene.sim.task
            expert = SlideExpert()
            for ep in range(n_episodes):
                xy = (rng.uniform(*t.block_x_range), rng.uniform(*t.block_y_range))
                reset_episode(robot, xy, home=ep == 0)
                results.append(run_episode(robot, expert, max_steps=max_steps))
                logger.info("expert episode %d: %s", ep, results[-1])
        finally:
            robot.disconnect()
    n_ok = sum(r["success"] for r in results)
    return {
        "episodes": n_episodes,
        "successes": n_ok,
        "success_rate": n_ok / max(n_episodes, 1),
        "mean_steps": float(np.mean([r["steps"] for r in results])),
        "results": results,
    }


def evaluate_policy(
    policy_path: str | Path,
    n_episodes: int,
    host: str = "127.0.0.1",
    seed: int = 1000,
    max_steps: int = 80,
    device: str = "cpu",
    overrides: dict | None = None,
) -> dict:
    """Closed-loop success rate of a trained LeRobot policy on Slide (same pipeline as lerobot-rollout)."""
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies import get_policy_class, make_pre_post_processors
    from lerobot.policies.utils import make_robot_action, prepare_observation_for_inference
    from lerobot.robots import make_robot_from_config
    from lerobot.utils.feature_utils import build_dataset_frame
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()  # as LeRobot's CLIs do: makes `cdp` (and other plugin types) loadable
    from cdp_plugin.policy.safe_load import validate_processor_files

    validate_processor_files(policy_path)  # only registered processor steps (no code from the JSON)
    pcfg = PreTrainedConfig.from_pretrained(policy_path)
    for k, v in (overrides or {}).items():
        setattr(pcfg, k, v)
    pcfg.device = device
    policy = get_policy_class(pcfg.type).from_pretrained(policy_path, config=pcfg)
    policy.to(device).eval()
    pre, post = make_pre_post_processors(
        policy_cfg=pcfg,
        pretrained_path=str(policy_path),
        preprocessor_overrides={"device_processor": {"device": device}},
    )
    camera = any(k.startswith("observation.images.") for k in pcfg.input_features)
    cfg = slide_robot_config(host, seed, camera, calibration_dir=Path(policy_path).parent / ".calibration")
    robot = make_robot_from_config(cfg)
    rng = np.random.default_rng(seed)
    robot.connect()
    results, infer_s, n_infer = [], 0.0, 0
    try:
        features = rollout_features(robot)
        keys = list(robot.action_features)

        env_state = "observation.environment_state" in pcfg.input_features
        if env_state:  # low-dimensional variant (see to_state_dataset)
            names = features["observation.state"]["names"]
            features["observation.state"] = {
                "dtype": "float32",
                "shape": (len(names) - 2,),
                "names": [n for n in names if n not in BLOCK_KEYS],
            }
            features["observation.environment_state"] = {
                "dtype": "float32",
                "shape": (2,),
                "names": list(BLOCK_KEYS),
            }

        def act(obs):
            nonlocal infer_s, n_infer
            t0 = time.perf_counter()
            frame = build_dataset_frame(features, obs, "observation")
            with torch.inference_mode():
                o = prepare_observation_for_inference(frame, torch.device(device), TASK_TEXT, robot.name)
                a = post(policy.select_action(pre(o)))
            ad = make_robot_action(a.squeeze(0).cpu(), features)
            infer_s += time.perf_counter() - t0
            n_infer += 1
            return {k: ad[k] for k in keys}

        t = robot.scene.sim.task
        for ep in range(n_episodes):
            reset_episode(robot, (rng.uniform(*t.block_x_range), rng.uniform(*t.block_y_range)), home=ep == 0)
            policy.reset()
            pre.reset()
            post.reset()
            res = run_episode(robot, act, max_steps=max_steps)
            results.append(res)
            logger.info("policy episode %d: %s", ep, res)
    finally:
        robot.disconnect()
    n_ok = sum(r["success"] for r in results)
    return {
        "episodes": n_episodes,
        "successes": n_ok,
        "success_rate": n_ok / max(n_episodes, 1),
        "mean_final_distance": float(np.mean([r["final_distance"] for r in results])),
        "mean_step_ms": 1000.0 * infer_s / max(n_infer, 1),
        "results": results,
    }


def free_loopback_host(seed: int | None = None) -> str:
    """A random 127.x.y.z address whose libfranka ports (1337 TCP, 1338 TCP) are free."""
    import random
    import socket

    rnd = random.Random(seed)
    for _ in range(50):
        host = f"127.{rnd.randint(1, 254)}.{rnd.randint(1, 254)}.{rnd.randint(2, 254)}"
        ok = True
        for port in (1337, 1338):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return host
    raise RuntimeError("no free loopback address found")


__all__ = [
    "SlideExpert",
    "to_state_dataset",
    "evaluate_expert",
    "evaluate_policy",
    "free_loopback_host",
    "record_dataset",
    "reset_episode",
    "rollout_features",
    "run_episode",
    "slide_robot_config",
    "TASK_TEXT",
    "FPS",
]
