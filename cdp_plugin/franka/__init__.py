"""Franka Panda / FR3 deployment through LeRobot (``--robot.type=franka``), built on franky.

Importing this package only registers the configs (``franka`` robot, ``franky_sim`` camera); franky,
franky-sim and MuJoCo are imported when a robot connects. See ``docs/franka.md``.
"""

from .config_franka import FrankaConfig, FrankySimCameraConfig

__all__ = [
    "FrankaConfig",
    "FrankySimCameraConfig",
    "Franka",
    "FrankySimCamera",
    "FrankaSafetyError",
    "FrankaControlError",
    "SlideSim",
]


def __getattr__(name: str):  # lazy: LeRobot's device factory looks classes up on this package
    if name in ("Franka", "FrankaSafetyError", "FrankaControlError"):
        from . import franka

        return getattr(franka, name)
    if name == "FrankySimCamera":
        from .sim_camera import FrankySimCamera

        return FrankySimCamera
    if name in ("SlideSim", "SlideTaskConfig"):
        from . import sim

        return getattr(sim, name)
    raise AttributeError(name)
