"""Simulated tasks for LeRobot: importing this package registers them (cheaply; simulators load lazily).

- ``--env.type=pointmaze``: goal-conditioned PointMaze (gymnasium-robotics), ``--env.task=TwoRoutes|UMaze|Open|
  Medium|Large``,
- ``--env.type=robosuite_lift`` / ``robosuite_can`` (or ``robosuite`` with ``--env.task=Lift|PickPlaceCan``):
  robosuite with the Panda arm and OSC_POSE delta actions.

Each registers an ``EnvConfig`` choice for ``lerobot-eval`` / ``lerobot-train`` and a gymnasium id
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

from cdp_plugin.envs.configs import (  # noqa: E402
    PointMazeEnvConfig,
    RobosuiteCanEnvConfig,
    RobosuiteEnvConfig,
    RobosuiteLiftEnvConfig,
)

__all__ = ["PointMazeEnvConfig", "RobosuiteEnvConfig", "RobosuiteLiftEnvConfig", "RobosuiteCanEnvConfig"]
