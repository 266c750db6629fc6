"""Configs of the ``franka`` LeRobot robot and the ``franky_sim`` camera (registered on import; cheap)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.cameras import CameraConfig
from lerobot.robots import RobotConfig

ACTION_SPACES = ("ee_pos", "ee_delta", "ee_pose", "joint")

# FR3 joint limits (rad), from the Franka datasheet; Panda limits are slightly wider.
FR3_Q_MIN = (-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159)
FR3_Q_MAX = (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159)
HOME_Q = (0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785)
# Scenes a robot can host (``--robot.sim=<name>``): name -> "module:factory", the factory called with the
# FrankaConfig and returning a :class:`~cdp_plugin.franka.franka.FrankaScene`. The driver knows nothing else
# about them; add a simulated task here (imported only when a robot with that ``sim`` is built).
SIM_SCENES: dict[str, str] = {"slide": "cdp_plugin.franka.sim:SlideScene"}


@RobotConfig.register_subclass("franka")
@dataclass(kw_only=True)
class FrankaConfig(RobotConfig):
    """A Franka Panda / FR3 arm driven through franky (libfranka).

    Only ``ip`` changes between the simulator and a real arm. ``sim="slide"`` starts franky-sim with the
    Slide scene inside this process on ``ip`` (a loopback address) before connecting; leave it unset
    for hardware.
    """

    ip: str = "172.16.0.2"
    # "ee_pos": absolute TCP position x,y,z (orientation held); "ee_delta": TCP displacement per step;
    # "ee_pose": absolute position + quaternion (qx,qy,qz,qw); "joint": 7 joint targets. Plus gripper
    # width when use_gripper.
    action_space: str = "ee_pos"
    use_gripper: bool = True
    # Global scaling of franky's velocity/acceleration/jerk limits (0 < f <= 1).
    dynamics_factor: float = 0.15
    # Workspace box for TCP targets (base frame, metres); targets are clamped into it with a warning.
    workspace_min: list[float] = field(default_factory=lambda: [0.30, -0.30, 0.015])
    workspace_max: list[float] = field(default_factory=lambda: [0.75, 0.30, 0.60])
    # Per-step motion limits; larger steps are clamped (with a warning).
    max_step_pos: float = 0.04
    max_step_rot: float = 0.2
    max_step_joint: float = 0.15
    # An action further than this beyond the workspace box, or an ee_delta step larger than
    # abort_factor * max_step_pos, is treated as out of range: the arm is stopped and FrankaSafetyError
    # raised.
    # (An absolute target far from the measured pose is clamped, never aborted: the distance includes the
    # arm's lag, which depends on how fast the control loop runs.)
    abort_margin: float = 0.10
    abort_factor: float = 5.0
    joint_limit_margin: float = 0.05
    # Gripper: width range (m), speed (m/s); commands smaller than the deadband are ignored.
    gripper_max_width: float = 0.08
    gripper_speed: float = 0.05
    gripper_deadband: float = 0.004
    home_joints: list[float] = field(default_factory=lambda: list(HOME_Q))
    # libfranka collision thresholds (Nm, N) passed to franky.Robot
    torque_threshold: float = 20.0
    force_threshold: float = 30.0
    # On a real arm keep "enforce" (needs a PREEMPT_RT kernel); the simulator uses "ignore".
    realtime: str = "ignore"
    # Call libfranka's automatic error recovery on connect.
    recover_on_connect: bool = True
    # Simulation only: the scene the robot hosts (a SIM_SCENES name; "slide" starts franky-sim with the
    # Slide scene in-process on `ip` before connecting, unless one already runs there).
    sim: str | None = None
    sim_seed: int = 0
    cameras: dict[str, CameraConfig] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {self.action_space!r}")
        if not 0.0 < self.dynamics_factor <= 1.0:
            raise ValueError(f"dynamics_factor must be in (0, 1], got {self.dynamics_factor}")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ValueError("workspace_min/max need 3 values (x, y, z)")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max, strict=True)):
            raise ValueError("workspace_min must be below workspace_max on every axis")
        if len(self.home_joints) != 7:
            raise ValueError("home_joints needs 7 values")
        if self.sim is not None and self.sim not in SIM_SCENES:
            raise ValueError(f"sim must be None or one of {sorted(SIM_SCENES)}, got {self.sim!r}")
        if self.realtime not in ("enforce", "ignore"):
            raise ValueError("realtime must be 'enforce' or 'ignore'")


@CameraConfig.register_subclass("franky_sim")
@dataclass(kw_only=True)
class FrankySimCameraConfig(CameraConfig):
    """Schematic top-down view of the franky-sim Slide scene running in this process on ``host``.

    For a real arm use an ``opencv`` or ``intelrealsense`` camera instead.
    """

    host: str = "127.0.0.1"
    fps: int | None = 30
    width: int | None = 96
    height: int | None = 96
