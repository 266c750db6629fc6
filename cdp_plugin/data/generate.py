"""Datasets for the plugin's tasks, written as LeRobotDataset v3: scripted experts, or recorded demonstrations.

One command per task (the task table :data:`cdp_plugin.envs.tasks.TASKS` names each task's generator)::

    python -m cdp_plugin.data.generate pointmaze --episodes 100 --out data/pointmaze --seed 0 --noise 0.1
    python -m cdp_plugin.data.generate lift --episodes 100 --out data/lift --seed 0 --noise 0.05
    python -m cdp_plugin.data.generate can --episodes 100 --out data/can --seed 0 --noise 0.05 [--images]
    python -m cdp_plugin.data.generate pusht --episodes 206 --out data/pusht [--images] [--source <zarr>]

Push-T converts the first ``--episodes`` human demonstrations (:mod:`cdp_plugin.data.pusht`; ``--images``:
the image flavour). For the scripted experts:

Episode ``i`` (counting attempts) resets the env with seed ``seed + i`` and draws the expert's route and noise
from ``numpy.random.default_rng([seed, i])``, so a run is reproducible. Failed attempts are discarded (the
success rate is reported) unless ``--keep-failures``. The dataset appears at ``--out`` only when complete.
Keys match the evaluation envs (``--env.type=pointmaze|robosuite_lift|robosuite_can``): ``observation.state``,
``observation.environment_state``, ``action``, optional ``observation.image``, plus ``next.reward``,
``next.success`` and ``next.done``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cdp_plugin.data.writer import (
    NonFiniteValueError,
    OutputPathError,
    atomic_dataset,
    check_output_path,
    task_features,
)
from cdp_plugin.envs.tasks import TASKS, get_task


@dataclass
class GenerateConfig:
    """Options of one generation run."""

    task: str
    out: Path
    episodes: int = 50
    seed: int = 0
    noise: float | None = None  # None: the task's default
    images: bool = False
    sim_task: str | None = (
        None  # PointMaze map (TwoRoutes, UMaze, Open, Medium, Large); None: the task's default
    )
    max_steps: int | None = None
    max_attempts: int | None = None  # None: 2 * episodes + 10
    keep_failures: bool = False
    repo_id: str | None = None
    overwrite: bool = False
    source: Path | None = None  # recorded data a task converts (Push-T's zarr); None: the task's default


@dataclass
class GenerateReport:
    """What a run produced and how fast (printed as JSON and stored in ``meta/cdp_provenance.json``)."""

    task: str
    episodes_written: int = 0
    attempts: int = 0
    successes: int = 0
    frames: int = 0
    env_steps: int = 0
    sim_seconds: float = 0.0
    total_seconds: float = 0.0
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.attempts, 1)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("episode_lengths")
        d.update(
            success_rate=round(self.success_rate, 4),
            mean_episode_length=float(np.mean(self.episode_lengths)) if self.episode_lengths else 0.0,
            seconds_per_episode=round(self.total_seconds / max(self.attempts, 1), 4),
            sim_steps_per_second=round(self.env_steps / max(self.sim_seconds, 1e-9), 1),
        )
        return d


def rollout(env, expert, seed: int, max_steps: int) -> tuple[dict[str, np.ndarray], bool, float]:
    """Run one expert episode; return its frames, whether it succeeded, and the seconds spent in the simulator."""
    from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE

    obs, _ = env.reset(seed=seed)
    expert.reset(obs)
    keys = {"agent_pos": OBS_STATE, "environment_state": OBS_ENV_STATE, "pixels": OBS_IMAGE}
    buf: dict[str, list] = {
        k: [] for k in [*keys.values(), ACTION, "next.reward", "next.success", "next.done"]
    }
    buf = {k: v for k, v in buf.items() if k != OBS_IMAGE or "pixels" in obs}
    success, sim_time = False, 0.0
    for t in range(max_steps):
        action = expert.act(obs)
        for src, dst in keys.items():
            if src in obs:
                buf[dst].append(obs[src].astype(np.uint8 if src == "pixels" else np.float32))
        buf[ACTION].append(np.asarray(action, dtype=np.float32))
        t0 = time.perf_counter()
        obs, reward, terminated, truncated, info = env.step(action)
        sim_time += time.perf_counter() - t0
        success = bool(info["is_success"])
        done = terminated or truncated or t == max_steps - 1
        buf["next.reward"].append(np.array([reward], dtype=np.float32))
        buf["next.success"].append(np.array([success]))
        buf["next.done"].append(np.array([done]))
        if terminated or truncated:
            break
    return {k: np.stack(v) for k, v in buf.items()}, success, sim_time


def generate(cfg: GenerateConfig) -> GenerateReport:
    """Write task ``cfg.task``'s dataset at ``cfg.out`` with the generator its spec names (``TASKS``)."""
    check_output_path(cfg.out, cfg.overwrite)  # refuse an unusable --out before any work (writer.py)
    return get_task(cfg.task).make_dataset(cfg)


def generate_expert_dataset(cfg: GenerateConfig) -> GenerateReport:
    """Generate ``cfg.episodes`` scripted-expert episodes into a LeRobotDataset at ``cfg.out``."""
    spec = get_task(cfg.task)
    sim_task = cfg.sim_task or spec.sim_task
    noise = spec.default_noise if cfg.noise is None else cfg.noise
    max_steps = cfg.max_steps or spec.max_steps
    max_attempts = cfg.max_attempts or 2 * cfg.episodes + 10
    rng = np.random.default_rng(cfg.seed)  # replaced per episode; the env/expert hold a reference via .rng
    env, expert = spec.make_env_and_expert(sim_task, cfg.images, rng, noise)
    obs_space = env.observation_space
    features = task_features(
        obs_space["agent_pos"].shape[0],
        obs_space["environment_state"].shape[0],
        env.action_space.shape[0],
        image_shape=(env.height, env.width) if cfg.images else None,
    )
    report = GenerateReport(task=cfg.task)
    provenance = {
        "generator": "cdp_plugin.data.generate",
        "config": {
            **asdict(cfg),
            "out": str(cfg.out),
            "noise": noise,
            "sim_task": sim_task,
            "max_steps": max_steps,
        },
        "env_type": spec.env_type,
        "python": platform.python_version(),
    }
    start = time.perf_counter()
    with atomic_dataset(
        cfg.out,
        repo_id=cfg.repo_id or f"local/{cfg.task}_expert",
        fps=env.fps,
        features=features,
        robot_type=spec.robot_type,
        overwrite=cfg.overwrite,
        provenance=provenance,
    ) as ds:
        bar = tqdm(total=cfg.episodes, desc=f"{cfg.task} expert episodes", unit="ep")
        while report.episodes_written < cfg.episodes:
            if report.attempts >= max_attempts:
                raise RuntimeError(
                    f"{cfg.task}: only {report.episodes_written}/{cfg.episodes} successful episodes after "
                    f"{report.attempts} attempts (success rate {report.success_rate:.0%}); lower --noise or raise "
                    "--max-attempts"
                )
            i = report.attempts
            expert.rng = np.random.default_rng([cfg.seed, i])
            frames, success, sim_time = rollout(env, expert, seed=cfg.seed + i, max_steps=max_steps)
            report.attempts += 1
            report.successes += int(success)
            report.env_steps += len(frames["action"])
            report.sim_seconds += sim_time
            if success or cfg.keep_failures:
                for t in range(len(frames["action"])):
                    ds.add_frame({**{k: v[t] for k, v in frames.items()}, "task": env.task_description})
                ds.save_episode()
                report.episodes_written += 1
                report.frames += len(frames["action"])
                report.episode_lengths.append(len(frames["action"]))
                bar.update()
            bar.set_postfix(success_rate=f"{report.success_rate:.0%}")
        bar.close()
        report.total_seconds = time.perf_counter() - start
        provenance["report"] = report.summary()
    env.close()
    return report


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    p = argparse.ArgumentParser(
        prog="python -m cdp_plugin.data.generate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--episodes", type=int, default=50, help="number of episodes to write")
    p.add_argument("--out", type=Path, required=True, help="output dataset directory (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--noise", type=float, default=None, help="std of Gaussian action noise (default: per task)"
    )
    p.add_argument("--images", action="store_true", help="also record observation.image")
    p.add_argument("--sim-task", default=None, help="PointMaze map: TwoRoutes, UMaze, Open, Medium, Large")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: per task)")
    p.add_argument("--max-attempts", type=int, default=None, help="give up after this many attempts")
    p.add_argument("--keep-failures", action="store_true", help="also write failed episodes")
    p.add_argument(
        "--repo-id", default=None, help="repo_id stored in the metadata (default local/<task>_expert)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="recorded data for tasks converted from demonstrations (pusht: the zarr)",
    )
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error("--episodes must be >= 1")
    return GenerateConfig(
        task=a.task,
        out=a.out,
        episodes=a.episodes,
        seed=a.seed,
        noise=a.noise,
        images=a.images,
        sim_task=a.sim_task,
        max_steps=a.max_steps,
        max_attempts=a.max_attempts,
        keep_failures=a.keep_failures,
        repo_id=a.repo_id,
        overwrite=a.overwrite,
        source=a.source,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        report = generate(parse_args(argv))
    except (OutputPathError, NonFiniteValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
