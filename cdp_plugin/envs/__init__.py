"""Simulated tasks for LeRobot: importing this package registers them (cheaply; simulators load lazily).

- ``--env.type=pointmaze``: goal-conditioned PointMaze (gymnasium-robotics), ``--env.task=TwoRoutes|UMaze|Open|
  Medium|Large``,
- ``--env.type=robosuite_lift`` / ``robosuite_can`` (or ``robosuite`` with ``--env.task=Lift|PickPlaceCan``):
  robosuite with the Panda arm and OSC_POSE delta actions.

- ``--env.type=pusht``: LeRobot's own gym-pusht, trained on Chi et al.'s human demonstrations
  (:mod:`cdp_plugin.data.pusht`).

Every task's facts (env type, expert or dataset generator, bench defaults) are one entry of
:data:`cdp_plugin.envs.tasks.TASKS`.

Each plugin env registers an ``EnvConfig`` choice for ``lerobot-eval`` / ``lerobot-train`` and a gymnasium id
(``cdp/PointMaze-v0``, ``cdp/Robosuite-v0``) whose entry point is imported only by ``gym.make``.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

for _gym_id, _entry in (
    ("cdp/PointMaze-v0", "cdp_plugin.envs.pointmaze:PointMazeEnv"),
    ("cdp/Robosuite-v0", "cdp_plugin.envs.robosuite_env:RobosuiteEnv"),
):
    if _gym_id not in registry:
        register(id=_gym_id, entry_point=_entry)

from cdp_plugin.envs.configs import (  # noqa: E402  (after the gym registration above)
    PointMazeEnvConfig,
    RobosuiteCanEnvConfig,
    RobosuiteEnvConfig,
    RobosuiteLiftEnvConfig,
)
from cdp_plugin.envs.tasks import TASKS, BenchDefaults, TaskSpec, get_task  # noqa: E402

__all__ = [
    "TASKS",
    "BenchDefaults",
    "PointMazeEnvConfig",
    "RobosuiteCanEnvConfig",
    "RobosuiteEnvConfig",
    "RobosuiteLiftEnvConfig",
    "TaskSpec",
    "get_task",
]
