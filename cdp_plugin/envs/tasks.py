"""The task table: every fact about a task in one :class:`TaskSpec`, all specs in one dict, :data:`TASKS`.

A task is what the plugin can make a dataset for, train on and evaluate: ``python -m cdp_plugin.data.generate
<task>`` builds its dataset through ``spec.dataset``, ``lerobot-eval --env.type=<spec.env_type>`` evaluates in
its simulator, and ``cdp-bench --tasks <task>`` reads ``spec.bench`` for sizes a profile does not set.

Callables are named as ``"module:attribute"`` strings (like gymnasium entry points) and imported only when
used, so importing this table (which ``import cdp_plugin.envs`` does) loads no simulator.

Add a task: write one module (an env with LeRobot's observation keys plus an expert, or a converter of
recorded demonstrations) and add one entry below; if it brings its own env type, register its ``EnvConfig``
in :mod:`cdp_plugin.envs.configs`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The scripted-expert generator; tasks with other data sources name their own (same signature).
EXPERT_DATASET = "cdp_plugin.data.generate:generate_expert_dataset"

# Where the Push-T human demonstrations are looked for: $CDP_PUSHT_ZARR, else ../shared/data/pusht beside the
# project (this checkout's layout); users pass --source to the generator or the converter.
PUSHT_ZARR_ENV = "CDP_PUSHT_ZARR"
_REPO = Path(__file__).resolve().parents[2]


def default_pusht_zarr() -> Path:
    """The Push-T zarr: ``$CDP_PUSHT_ZARR``, else ``<repo>/../shared/data/pusht/pusht_cchi_v7_replay.zarr``"""
    env = os.environ.get(PUSHT_ZARR_ENV)
    return Path(env) if env else _REPO.parent / "shared" / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"


# LeRobot's diffusion config normalises only VISUAL / STATE / ACTION; keypoints in environment_state
# (FeatureType.ENV, pixels) would reach the network raw. Tasks with such inputs pass this to lerobot-train.
ENV_MIN_MAX = (
    '--policy.normalization_mapping={"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX", '
    '"ACTION": "MIN_MAX"}'
)


def load_entry(ref: str) -> Callable:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class BenchDefaults:
    """Sizes ``cdp-bench`` uses for a task when its profile does not name the task."""

    dataset_episodes: int  # episodes of the bench dataset (generated or converted once per matrix directory)
    eval_episodes: int  # lerobot-eval episodes per cell
    env_episode_length: int  # --env.episode_length at evaluation
    env_args: tuple[str, ...] = ()  # further lerobot-eval flags (e.g. the observation type)
    train_args: tuple[str, ...] = ()  # further lerobot-train flags the task needs (e.g. its normalisation)


@dataclass(frozen=True)
class TaskSpec:
    """One task: its LeRobot env type, its simulator settings, its dataset generator and its bench defaults.

    ``expert`` builds ``(env, expert)`` for scripted-expert tasks: ``f(sim_task, obs_type, rng, noise)`` with
    ``obs_type`` ``"state"`` or ``"pixels_state"``; ``None`` where the data are recorded demonstrations.
    ``dataset`` writes the task's LeRobotDataset: ``f(GenerateConfig) -> GenerateReport``
    (:mod:`cdp_plugin.data.generate`). ``source`` returns the recorded data a dataset is made from (``None``:
    made by simulation); where it is missing the task is unavailable and :attr:`skip_reason` says why.
    """

    name: str
    env_type: str  # --env.type for lerobot-eval / lerobot-train
    env_config: str  # "module:EnvConfig subclass" of that env type
    fps: int
    max_steps: int  # episode step limit while generating (the env type's default episode length)
    robot_type: str
    bench: BenchDefaults
    sim_task: str | None = None  # --env.task / the simulator's map or task name
    default_noise: float = 0.0  # std of the expert's action noise
    image_size: tuple[int, int] = (96, 96)
    expert: str | None = None
    dataset: str = EXPERT_DATASET
    source: Callable[[], Path] | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)

    def make_env_and_expert(self, sim_task: str | None, images: bool, rng, noise: float):
        """The raw (un-wrapped) env and its scripted expert."""
        if self.expert is None:
            raise ValueError(f"task {self.name!r} has no scripted expert (its data are {self.description})")
        obs_type = "pixels_state" if images else "state"
        return load_entry(self.expert)(sim_task or self.sim_task, obs_type, rng, noise)

    def make_dataset(self, cfg):
        """Write the task's dataset for a :class:`cdp_plugin.data.generate.GenerateConfig`."""
        return load_entry(self.dataset)(cfg)

    def env_config_class(self) -> type:
        return load_entry(self.env_config)

    @property
    def skip_reason(self) -> str | None:
        """Why the task cannot run here (its recorded data are missing), else ``None``."""
        if self.source is None:
            return None
        path = self.source()
        if Path(path).exists():
            return None
        return (
            f"{self.name}: no data at {path} (set {PUSHT_ZARR_ENV} or pass --source to point at "
            f"{Path(path).name})"
        )


TASKS: dict[str, TaskSpec] = {
    "pointmaze": TaskSpec(
        name="pointmaze",
        env_type="pointmaze",
        env_config="cdp_plugin.envs.configs:PointMazeEnvConfig",
        fps=50,
        max_steps=200,
        robot_type="point",
        sim_task="TwoRoutes",
        default_noise=0.1,
        image_size=(96, 96),
        expert="cdp_plugin.envs.pointmaze:make_env_and_expert",
        bench=BenchDefaults(dataset_episodes=50, eval_episodes=50, env_episode_length=200),
        description="PointMaze scripted expert (BFS planner + PD controller)",
    ),
    "lift": TaskSpec(
        name="lift",
        env_type="robosuite_lift",
        env_config="cdp_plugin.envs.configs:RobosuiteLiftEnvConfig",
        fps=20,
        max_steps=200,
        robot_type="panda",
        sim_task="Lift",
        default_noise=0.05,
        image_size=(84, 84),
        expert="cdp_plugin.envs.robosuite_env:make_env_and_expert",
        bench=BenchDefaults(dataset_episodes=50, eval_episodes=50, env_episode_length=200),
        description="robosuite Lift scripted expert",
    ),
    "can": TaskSpec(
        name="can",
        env_type="robosuite_can",
        env_config="cdp_plugin.envs.configs:RobosuiteCanEnvConfig",
        fps=20,
        max_steps=400,
        robot_type="panda",
        sim_task="PickPlaceCan",
        default_noise=0.05,
        image_size=(84, 84),
        expert="cdp_plugin.envs.robosuite_env:make_env_and_expert",
        bench=BenchDefaults(dataset_episodes=50, eval_episodes=50, env_episode_length=400),
        description="robosuite PickPlaceCan scripted expert",
    ),
    "pusht": TaskSpec(
        name="pusht",
        env_type="pusht",
        env_config="lerobot.envs.configs:PushtEnv",
        fps=10,
        max_steps=300,
        robot_type="2d pointer",
        image_size=(96, 96),
        dataset="cdp_plugin.data.pusht:generate_dataset",
        source=default_pusht_zarr,
        bench=BenchDefaults(
            dataset_episodes=206,
            eval_episodes=50,
            env_episode_length=300,
            env_args=("--env.obs_type=environment_state_agent_pos",),
            train_args=(ENV_MIN_MAX,),
        ),
        description="Chi et al.'s 206 human Push-T demonstrations (pusht_cchi_v7_replay.zarr)",
    ),
}


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; one line naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
