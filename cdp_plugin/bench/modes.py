"""Mode coverage: which of a task's equally good solutions a policy's rollouts take.

A classifier maps one episode's state trajectory (un-normalised ``observation.state`` and
``observation.environment_state``, (T, dim) each, up to the episode's end) to ``(situation, mode)``:
``situation`` groups episodes whose start and goal admit the same set of modes, ``mode`` names the solution
taken (``None``: undecided). :data:`MODE_CLASSIFIERS` holds one per task; add a task's classifier there
(Push-T: which side of the T the agent approaches).

Coverage is the share of the minority mode among decided episodes of *multimodal* situations (0.5: both
modes equally often, as the expert demonstrations; 0: the policy collapsed onto one mode).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

Classifier = Callable[[np.ndarray, np.ndarray], tuple[str | None, str | None]]


def pointmaze_route(state: np.ndarray, goal: np.ndarray) -> tuple[str | None, str | None]:
    """PointMaze ``TwoRoutes`` (5 x 7 cells of size 1, wall block in the middle row, |x| < 1.5, y = 0):
    the route is ``over`` (y > 0) or ``under`` (y < 0) where the ball crosses the middle column (|x| < 0.5).
    The situation is ``start row -> goal row``; middle-to-middle and corner-to-opposite-corner have two
    equally short routes (``2->2``, ``1->3``, ``3->1``), the others one."""
    xy = state[:, :2]
    row = lambda y: int(np.clip(np.round(-y) + 2, 1, 3))
    start, end = row(xy[0, 1]), row(goal[0, 1])
    sit = f"{start}->{end}"
    mid = np.abs(xy[:, 0]) < 0.5
    if not mid.any():
        return sit, None
    y = float(xy[mid, 1].mean())
    return sit, ("over" if y > 0 else "under")


MULTIMODAL = {"pointmaze": {"2->2", "1->3", "3->1"}}
MODE_CLASSIFIERS: dict[str, Classifier] = {"pointmaze": pointmaze_route}


def coverage(episodes: list[tuple[str | None, str | None]], multimodal: set[str]) -> dict:
    """Counts of modes per situation and the minority-mode share over the multimodal situations."""
    per: dict[str, Counter] = {}
    for sit, mode in episodes:
        per.setdefault(str(sit), Counter())[str(mode)] += 1
    decided = [m for s, m in episodes if s in multimodal and m is not None]
    counts = Counter(decided)
    minority = min(counts.values()) / len(decided) if len(counts) >= 2 else 0.0
    return {
        "per_situation": {k: dict(v) for k, v in per.items()},
        "multimodal_n": len(decided),
        "multimodal_counts": dict(counts),
        "minority_share": minority if decided else None,
    }


def mode_coverage(
    ckpt: str | Path, task: str, n_episodes: int, num_inference_steps: int, seed: int, episode_length: int
) -> dict:
    """Roll the checkpoint out ``n_episodes`` times in-process (LeRobot's own ``rollout``, DDIM sampler) and
    classify every episode with the task's classifier."""
    import torch
    from lerobot.envs.factory import (
        make_env,
        make_env_config,
        make_env_pre_post_processors,
    )
    from lerobot.scripts.lerobot_eval import rollout

    from cdp_plugin.bench.probe import ProbeSettings, load_policy
    from cdp_plugin.envs.tasks import TASKS

    settings = ProbeSettings(num_inference_steps=num_inference_steps)
    policy, pre, cfg = load_policy(ckpt, settings)
    from lerobot.policies.factory import make_pre_post_processors

    pre, post = make_pre_post_processors(cfg, pretrained_path=str(ckpt))
    env_cfg = make_env_config(TASKS[task].env_type, episode_length=episode_length)
    envs = make_env(env_cfg, n_envs=n_episodes, use_async_envs=False)
    vec = next(iter(next(iter(envs.values())).values())) if isinstance(envs, dict) else envs
    env_pre, env_post = make_env_pre_post_processors(env_cfg=env_cfg, policy_cfg=cfg)
    try:
        with torch.no_grad():
            data = rollout(
                vec,
                policy,
                env_pre,
                env_post,
                pre,
                post,
                seeds=list(range(seed, seed + n_episodes)),
                return_observations=True,
            )
    finally:
        vec.close()
    obs = data["observation"]
    state = obs["observation.state"].numpy()
    goal = obs["observation.environment_state"].numpy()
    done = data["done"].numpy()
    classify = MODE_CLASSIFIERS[task]
    episodes = []
    for i in range(state.shape[0]):
        end = int(np.argmax(done[i])) + 1 if done[i].any() else done.shape[1]
        episodes.append(classify(state[i, : end + 1], goal[i, : end + 1]))
    out = coverage(episodes, MULTIMODAL.get(task, set()))
    out["successes"] = [bool(x) for x in data["success"].any(dim=1)]
    out["n_episodes"] = n_episodes
    return out
