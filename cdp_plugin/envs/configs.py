"""LeRobot ``EnvConfig`` choices for the plugin's tasks (``--env.type=pointmaze|robosuite|robosuite_lift|
robosuite_can``).

LeRobot's default ``EnvConfig.create_envs`` builds the vector env with ``gym.make(self.gym_id, **self.gym_kwargs)``;
the gym ids are registered by :mod:`cdp_plugin.envs`. Observation keys follow LeRobot's ``preprocess_observation``
(``agent_pos`` -> ``observation.state``, ``environment_state`` -> ``observation.environment_state``,
``pixels`` -> ``observation.image``), so the generated datasets and the evaluation envs use the same feature names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE

OBS_TYPES = ("state", "pixels_state")


def _features_map() -> dict[str, str]:
    return {ACTION: ACTION, "agent_pos": OBS_STATE, "environment_state": OBS_ENV_STATE, "pixels": OBS_IMAGE}


@dataclass
class _CdpEnvConfig(EnvConfig):
    """Shared fields: ``obs_type`` ``state`` (low-dim) or ``pixels_state`` (adds an image), episode length."""

    episode_length: int = 200
    obs_type: str = "state"
    observation_height: int = 96
    observation_width: int = 96
    render_mode: str = "rgb_array"
    features_map: dict[str, str] = field(default_factory=_features_map)

    # Dimensions, set by subclasses.
    _action_dim = 0
    _state_dim = 0

    def _env_state_dim(self) -> int:
        raise NotImplementedError

    def __post_init__(self):
        if self.obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {self.obs_type!r}")
        self.features = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(self._action_dim,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(self._state_dim,)),
            "environment_state": PolicyFeature(type=FeatureType.ENV, shape=(self._env_state_dim(),)),
        }
        if self.obs_type == "pixels_state":
            self.features["pixels"] = PolicyFeature(
                type=FeatureType.VISUAL, shape=(self.observation_height, self.observation_width, 3)
            )

    @property
    def package_name(self) -> str:
        return "cdp_plugin.envs"

    @property
    def gym_kwargs(self) -> dict:
        return {
            "task": self.task,
            "obs_type": self.obs_type,
            "observation_height": self.observation_height,
            "observation_width": self.observation_width,
            "render_mode": self.render_mode,
            "max_episode_steps": self.episode_length,
        }


@EnvConfig.register_subclass("pointmaze")
@dataclass
class PointMazeEnvConfig(_CdpEnvConfig):
    """Goal-conditioned PointMaze; ``task`` is the map (``TwoRoutes``, ``UMaze``, ``Open``, ``Medium``, ``Large``).

    State ``[x, y, vx, vy]``, environment state the goal ``[gx, gy]``, action a 2-D force in ``[-1, 1]``, 50 Hz.
    """

    task: str | None = "TwoRoutes"
    fps: int = 50
    episode_length: int = 200
    _action_dim = 2
    _state_dim = 4

    def _env_state_dim(self) -> int:
        return 2

    @property
    def gym_id(self) -> str:
        return "cdp/PointMaze-v0"


@EnvConfig.register_subclass("robosuite")
@dataclass
class RobosuiteEnvConfig(_CdpEnvConfig):
    """robosuite with the Panda arm, ``task`` ``Lift`` or ``PickPlaceCan``; 7-D OSC_POSE delta actions, 20 Hz.

    State: end-effector position, quaternion and gripper fingers (9); environment state: robosuite's
    ``object-state`` (Lift 10, PickPlaceCan 14); image (``obs_type=pixels_state``): ``agentview``, 84x84.
    """

    task: str | None = "Lift"
    fps: int = 20
    episode_length: int = 200
    observation_height: int = 84
    observation_width: int = 84
    _action_dim = 7
    _state_dim = 9

    def _env_state_dim(self) -> int:
        dims = {"Lift": 10, "PickPlaceCan": 14}
        if self.task not in dims:
            raise ValueError(f"robosuite task must be one of {sorted(dims)}, got {self.task!r}")
        return dims[self.task]

    @property
    def gym_id(self) -> str:
        return "cdp/Robosuite-v0"


@EnvConfig.register_subclass("robosuite_lift")
@dataclass
class RobosuiteLiftEnvConfig(RobosuiteEnvConfig):
    """robosuite Lift (Panda); same as ``--env.type=robosuite --env.task=Lift``."""

    task: str | None = "Lift"
    episode_length: int = 200


@EnvConfig.register_subclass("robosuite_can")
@dataclass
class RobosuiteCanEnvConfig(RobosuiteEnvConfig):
    """robosuite PickPlaceCan (Panda); same as ``--env.type=robosuite --env.task=PickPlaceCan``."""

    task: str | None = "PickPlaceCan"
    episode_length: int = 400
