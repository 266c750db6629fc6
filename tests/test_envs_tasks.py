"""The plugin's simulated tasks: cheap registration, LeRobot's make_env, observation/feature agreement, experts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from lerobot.envs.configs import EnvConfig
from lerobot.envs.factory import make_env, make_env_config
from lerobot.envs.utils import env_to_policy_features, preprocess_observation

import cdp_plugin.envs  # noqa: F401  (registers the env types)

ENV_TYPES = ["pointmaze", "robosuite_lift", "robosuite_can"]


def test_registration_is_cheap_and_complete():
    code = (
        "import sys, cdp_plugin.envs\n"
        "from lerobot.envs.configs import EnvConfig\n"
        "heavy = [m for m in ('robosuite', 'gymnasium_robotics', 'mujoco') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "known = EnvConfig.get_known_choices()\n"
        "assert {'pointmaze', 'robosuite', 'robosuite_lift', 'robosuite_can', 'pusht'} <= set(known), known\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_lerobot_plugin_shim_registers_envs():
    """``lerobot-eval``/``lerobot-train`` import installed ``lerobot_policy_*`` packages before parsing."""
    code = (
        "from lerobot.utils.import_utils import register_third_party_plugins\n"
        "register_third_party_plugins()\n"
        "from lerobot.envs.configs import EnvConfig\n"
        "print(sorted(EnvConfig.get_known_choices()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'pointmaze'" in out.stdout and "'robosuite_can'" in out.stdout


@pytest.mark.parametrize("env_type", ENV_TYPES)
def test_make_env_observations_match_declared_features(env_type):
    cfg = make_env_config(env_type, episode_length=7)
    envs = make_env(cfg, n_envs=1, use_async_envs=False)
    vec = envs[env_type][0]
    try:
        obs, info = vec.reset(seed=[3])
        policy_obs = preprocess_observation(obs)
        expected = env_to_policy_features(cfg)
        for key, ft in expected.items():
            if key == "action":
                assert vec.single_action_space.shape == ft.shape
            else:
                assert tuple(policy_obs[key].shape[1:]) == ft.shape, key
                assert np.isfinite(policy_obs[key].numpy()).all()
        assert vec.call("_max_episode_steps")[0] == 7
        steps = 0
        done = False
        rng = np.random.default_rng(0)
        while not done:
            obs, _reward, term, trunc, info = vec.step(
                rng.uniform(-1, 1, (1, *vec.single_action_space.shape))
            )
            steps += 1
            done = bool(term[0] or trunc[0])
            assert "is_success" in info or "final_info" in info
        assert steps <= 7
        frame = vec.envs[0].render()
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 0
        assert vec.envs[0].unwrapped.task_description
    finally:
        vec.close()


def test_pointmaze_pixels_observation():
    cfg = make_env_config("pointmaze", obs_type="pixels_state", observation_height=64, observation_width=80)
    vec = make_env(cfg, n_envs=1)["pointmaze"][0]
    obs, _ = vec.reset(seed=[0])
    policy_obs = preprocess_observation(obs)
    assert policy_obs["observation.image"].shape == (1, 3, 64, 80)
    assert env_to_policy_features(cfg)["observation.image"].shape == (3, 64, 80)
    vec.close()


def test_pointmaze_expert_succeeds_and_is_multimodal():
    from cdp_plugin.envs.pointmaze import PointMazeEnv, PointMazeExpert

    env = PointMazeEnv(task="TwoRoutes")
    successes = []
    for ep in range(20):
        obs, _ = env.reset(seed=ep)
        expert = PointMazeExpert(env, np.random.default_rng(ep), noise=0.1)
        expert.reset(obs)
        for _ in range(200):
            obs, _, term, _, info = env.step(expert.act(obs))
            if term:
                break
        successes.append(info["is_success"])
    assert np.mean(successes) >= 0.9

    # Middle-left start, middle-right goal: two equally short routes (over / under the wall).
    sides = set()
    for ep in range(8):
        obs, _ = env.reset(seed=100 + ep, options={"reset_cell": (2, 1), "goal_cell": (2, 5)})
        expert = PointMazeExpert(env, np.random.default_rng(ep))
        expert.reset(obs)
        ys = []
        for _ in range(200):
            obs, _, term, _, info = env.step(expert.act(obs))
            if abs(obs["agent_pos"][0]) < 0.3:  # crossing the maze's centre column
                ys.append(obs["agent_pos"][1])
            if term:
                break
        assert info["is_success"]
        sides.add(bool(np.mean(ys) > 0))
    assert sides == {True, False}, "the expert should take both routes around the wall"
    env.close()


@pytest.mark.parametrize("task,episodes,min_successes", [("Lift", 3, 3), ("PickPlaceCan", 2, 2)])
def test_robosuite_expert_succeeds(task, episodes, min_successes):
    from cdp_plugin.envs.robosuite_env import RobosuiteEnv, RobosuiteExpert

    env = RobosuiteEnv(task=task)
    successes = 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        expert = RobosuiteExpert(env, np.random.default_rng(ep), noise=0.05)
        expert.reset(obs)
        for _ in range(400):
            obs, _, term, _, info = env.step(expert.act(obs))
            if term:
                break
        successes += int(info["is_success"])
    env.close()
    assert successes >= min_successes


def test_unknown_task_and_obs_type_are_rejected():
    with pytest.raises(ValueError, match="obs_type"):
        make_env_config("pointmaze", obs_type="rgb")
    with pytest.raises(ValueError, match="robosuite task"):
        make_env_config("robosuite", task="Stack")
    assert EnvConfig.get_choice_class("robosuite_can")().features["environment_state"].shape == (14,)


def test_task_table_is_the_one_place():
    """Every task's env config is the registered choice of its env type, its generator and expert import, and
    the generator CLI and the bench offer exactly the table's tasks."""
    from cdp_plugin.bench import matrix
    from cdp_plugin.data.generate import parse_args
    from cdp_plugin.envs.tasks import TASKS, get_task, load_entry

    known = EnvConfig.get_known_choices()
    for name, spec in TASKS.items():
        assert spec.name == name
        assert known[spec.env_type] is spec.env_config_class(), name
        assert callable(load_entry(spec.dataset))
        if spec.expert is not None:
            assert callable(load_entry(spec.expert))
        assert spec.bench.dataset_episodes > 0 and spec.bench.eval_episodes > 0
        assert parse_args([name, "--out", "x"]).task == name
    assert matrix.TASKS is TASKS
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of"):
        get_task("nope")
