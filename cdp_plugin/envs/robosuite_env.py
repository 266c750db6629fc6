"""robosuite Lift and PickPlaceCan (Panda, OSC_POSE delta actions like robomimic) in LeRobot's observation format,
and scripted experts for both.

Observation keys (read by LeRobot's ``preprocess_observation``):

- ``agent_pos`` -> ``observation.state``: ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, xyzw),
  ``robot0_gripper_qpos`` (2) — robomimic's low-dim robot keys,
- ``environment_state`` -> ``observation.environment_state``: robosuite's ``object-state`` (Lift 10, Can 14),
- ``pixels`` -> ``observation.image`` (``obs_type="pixels_state"``): the ``agentview`` camera, flipped upright.
  Needs a working offscreen OpenGL (``MUJOCO_GL=egl`` or ``osmesa``).

Actions are 7-D ``[dx, dy, dz, dax, day, daz, gripper]`` in ``[-1, 1]``; the controller scales positions to 5 cm and
rotations to 0.5 rad per step (robosuite's default Panda OSC_POSE), the gripper closes at +1. Control runs at 20 Hz.
``render()`` returns the camera image when images are on, otherwise a schematic drawn with numpy (top view and
side view of gripper, object and target), so ``lerobot-eval`` can write videos without OpenGL.

The model is built once per instance (``hard_reset=False``, much faster resets) from ``model_seed``, so quantities
robosuite randomises at model construction (Lift's cube size) are fixed per instance; object poses and the robot's
initial joint noise are drawn at every ``reset(seed=...)``.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TASKS = {"Lift": "cube", "PickPlaceCan": "Can"}
STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


class RobosuiteEnv(gym.Env):
    """A robosuite task with the Panda arm behind the gymnasium API, terminating on success."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "Lift",
        obs_type: str = "state",
        camera: str = "agentview",
        observation_height: int = 84,
        observation_width: int = 84,
        render_mode: str = "rgb_array",
        control_freq: int = 20,
        model_seed: int = 0,
    ):
        if task not in TASKS:
            raise ValueError(f"Unknown robosuite task {task!r}; choose one of {sorted(TASKS)}")
        if obs_type not in ("state", "pixels_state"):
            raise ValueError(f"obs_type must be 'state' or 'pixels_state', got {obs_type!r}")
        import robosuite
        from robosuite.controllers import load_composite_controller_config

        self.task, self.obs_type, self.camera = task, obs_type, camera
        self.task_description = {"Lift": "lift the cube", "PickPlaceCan": "place the can in its bin"}[task]
        self.render_mode = render_mode
        self.height, self.width = observation_height, observation_width
        use_images = obs_type == "pixels_state"
        # Model construction draws from numpy's global generator (e.g. Lift's cube size): seed it, then restore it,
        # so every instance simulates the same model and seeded episodes are reproducible across processes.
        np_state = np.random.get_state()
        np.random.seed(model_seed)
        self._env = robosuite.make(
            task,
            robots="Panda",
            controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
            has_renderer=False,
            has_offscreen_renderer=use_images,
            use_camera_obs=use_images,
            camera_names=camera,
            camera_heights=observation_height,
            camera_widths=observation_width,
            use_object_obs=True,
            reward_shaping=False,
            control_freq=control_freq,
            horizon=10_000,  # the TimeLimit wrapper truncates; robosuite must not
            ignore_done=True,
            hard_reset=False,
        )
        np.random.set_state(np_state)
        self.metadata = {**self.metadata, "render_fps": control_freq}
        self._raw: dict | None = None
        obs = self._env.reset()
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self._env.action_dim,), dtype=np.float32)
        obs_spaces = {
            "agent_pos": spaces.Box(-np.inf, np.inf, shape=(9,), dtype=np.float64),
            "environment_state": spaces.Box(
                -np.inf, np.inf, shape=obs["object-state"].shape, dtype=np.float64
            ),
        }
        if use_images:
            obs_spaces["pixels"] = spaces.Box(0, 255, shape=(self.height, self.width, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

    @property
    def sim_env(self):
        """The underlying robosuite environment."""
        return self._env

    @property
    def fps(self) -> int:
        return self.metadata["render_fps"]

    def _obs(self, raw: dict) -> dict:
        self._raw = raw
        obs = {
            "agent_pos": np.concatenate([raw[k] for k in STATE_KEYS]).astype(np.float64),
            "environment_state": raw["object-state"].astype(np.float64),
        }
        if self.obs_type == "pixels_state":
            obs["pixels"] = np.ascontiguousarray(raw[f"{self.camera}_image"][::-1])
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # robosuite's object placement samplers draw from numpy's global generator.
            np.random.seed(seed)
        raw = self._env.reset()
        return self._obs(raw), {"is_success": bool(self._env._check_success())}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        raw, reward, _, _ = self._env.step(action)
        success = bool(self._env._check_success())
        return self._obs(raw), float(reward), success, False, {"is_success": success}

    def object_pos(self) -> np.ndarray:
        return np.asarray(self._raw[f"{TASKS[self.task]}_pos"])

    def target_pos(self) -> np.ndarray | None:
        if self.task == "PickPlaceCan":
            return np.asarray(self._env.target_bin_placements[self._env.object_to_id["can"]])
        return None

    def render(self) -> np.ndarray:
        if self.obs_type == "pixels_state" and self._raw is not None:
            return np.ascontiguousarray(self._raw[f"{self.camera}_image"][::-1])
        return self._schematic()

    def _schematic(self, size: int = 96) -> np.ndarray:
        """Top view (x-y, left) and side view (x-z, right) of gripper (blue), object (red), target (green)."""
        img = np.full((size, 2 * size, 3), 235, dtype=np.uint8)
        img[:, size - 1 : size + 1] = 120
        if self._raw is None:
            return img
        yy, xx = np.mgrid[0:size, 0:size]
        center = np.array([-0.05, 0.0, 0.8])  # roughly the table centre in world coordinates
        span = 0.9  # metres across a panel
        points = [(self._raw["robot0_eef_pos"], (30, 80, 220), 4), (self.object_pos(), (220, 50, 40), 4)]
        if self.target_pos() is not None:
            points.insert(0, (self.target_pos(), (60, 180, 75), 6))
        for pos, color, rad in points:
            rel = (np.asarray(pos) - center) / span * size
            for panel, (u, v) in enumerate(((rel[0], -rel[1]), (rel[0], -rel[2]))):
                pr, pc = size / 2 + v, size / 2 + u
                mask = (yy - pr) ** 2 + (xx - pc) ** 2 <= rad**2
                img[:, panel * size : (panel + 1) * size][mask] = color
        return img

    def close(self):
        self._env.close()


def _quat_yaw(q_xyzw: np.ndarray) -> float:
    x, y, z, w = q_xyzw
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class RobosuiteExpert:
    """Scripted pick (and place) expert for :class:`RobosuiteEnv`, a state machine over waypoints.

    Lift: above the cube -> down -> close -> lift. Can: above the can -> down -> close -> lift -> above its bin ->
    lower -> open. Position actions are ``clip(gain * (target - eef) / 0.05, -max_speed, max_speed)`` (5 cm per
    unit action); for the cube the gripper also turns to the cube's yaw (modulo 90 degrees). ``noise`` adds
    Gaussian noise to the translation part of the action.
    """

    def __init__(
        self,
        env: RobosuiteEnv,
        rng: np.random.Generator,
        noise: float = 0.0,
        gain: float = 0.5,
        max_speed: float = 1.0,
    ):
        self.env, self.rng, self.noise = env, rng, noise
        self.gain, self.max_speed = gain, max_speed
        self.phase, self.counter = 0, 0
        self._frozen: list | None = None

    def reset(self, obs: dict) -> None:
        self.phase, self.counter = 0, 0
        self._frozen = None

    def _plan(self) -> list[tuple[np.ndarray, float, float]]:
        """(target eef position, gripper command, tolerance) for each phase."""
        obj = self.env.object_pos()
        if self.env.task == "Lift":
            return [
                (obj + [0, 0, 0.06], -1.0, 0.01),
                (obj + [0, 0, -0.005], -1.0, 0.008),
                (obj + [0, 0, -0.005], 1.0, -10),  # close for 10 steps
                (obj + [0, 0, 0.25], 1.0, 0.0),
            ]
        tgt = self.env.target_pos()
        return [
            (obj + [0, 0, 0.08], -1.0, 0.01),
            (obj + [0, 0, 0.0], -1.0, 0.008),
            (obj + [0, 0, 0.0], 1.0, -10),
            (obj * [1, 1, 0] + [0, 0, tgt[2] + 0.25], 1.0, 0.02),
            (np.r_[tgt[:2], tgt[2] + 0.25], 1.0, 0.02),
            (np.r_[tgt[:2], tgt[2] + 0.12], 1.0, 0.015),
            (np.r_[tgt[:2], tgt[2] + 0.12], -1.0, -10),
            (np.r_[tgt[:2], tgt[2] + 0.25], -1.0, 0.0),
        ]

    def act(self, obs: dict) -> np.ndarray:
        raw = self.env._raw
        eef = np.asarray(raw["robot0_eef_pos"])
        if self.phase < 2 or self._frozen is None:
            self._frozen = (
                self._plan()
            )  # from the grasp on the object moves with the gripper: freeze the plan
        plan = self._frozen
        target, grip, tol = plan[min(self.phase, len(plan) - 1)]
        err = target - eef
        if tol < 0:
            self.counter += 1
            if self.counter >= -tol:
                self.phase, self.counter = self.phase + 1, 0
        elif tol > 0 and np.linalg.norm(err) < tol:
            self.phase += 1
        action = np.zeros(7)
        action[:3] = np.clip(self.gain * err / 0.05 * 4, -self.max_speed, self.max_speed)
        if self.env.task == "Lift" and self.phase <= 1:
            cube_yaw = _quat_yaw(np.asarray(raw["cube_quat"]))
            eef_yaw = _quat_yaw(np.asarray(raw["robot0_eef_quat"]))
            d = (cube_yaw - eef_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
            action[5] = np.clip(4.0 * d, -1, 1)  # 1 unit = 0.5 rad per step
        action[6] = grip
        if self.noise > 0:
            action[:3] += self.rng.normal(0.0, self.noise, size=3)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_env_and_expert(sim_task: str, obs_type: str, rng: np.random.Generator, noise: float):
    """The task table's expert entry (:mod:`cdp_plugin.envs.tasks`): a robosuite env and its expert."""
    try:
        env = RobosuiteEnv(task=sim_task, obs_type=obs_type)
    except Exception as e:  # robosuite raises various errors when OpenGL is missing
        if obs_type != "state":
            raise RuntimeError(
                f"could not create robosuite {sim_task} with camera images ({type(e).__name__}: {e}); "
                "images need offscreen OpenGL: set MUJOCO_GL=egl (GPU) or MUJOCO_GL=osmesa (CPU, libOSMesa)"
            ) from e
        raise
    return env, RobosuiteExpert(env, rng, noise=noise)
