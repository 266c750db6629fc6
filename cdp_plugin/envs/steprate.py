"""Measure simulator step rates (steps/s, single env, random actions) through LeRobot's ``make_env``.

::

    python -m cdp_plugin.envs.steprate --steps 2000 [--env-types pointmaze robosuite_lift robosuite_can pusht]

Warm-up steps (numba/JIT compilation, first resets) are excluded; resets inside the timed loop are included.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def step_rate(env_type: str, steps: int, warmup: int = 200, seed: int = 0, **env_kwargs) -> dict:
    """Steps per second of one ``env_type`` env (a 1-env SyncVectorEnv, as ``lerobot-eval --eval.batch_size=1``)."""
    from lerobot.envs.factory import make_env, make_env_config

    import cdp_plugin.envs  # noqa: F401

    cfg = make_env_config(env_type, **env_kwargs)
    t0 = time.perf_counter()
    vec = make_env(cfg, n_envs=1, use_async_envs=False)[env_type][0]
    vec.reset(seed=[seed])
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    low, high = vec.single_action_space.low, vec.single_action_space.high

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            vec.step(rng.uniform(low, high)[None])  # the vector env autoresets finished episodes
        return time.perf_counter() - start

    run(warmup)
    elapsed = run(steps)
    vec.close()
    return {
        "env_type": env_type,
        "steps": steps,
        "steps_per_s": round(steps / elapsed, 1),
        "build_and_reset_s": round(build_s, 2),
        **env_kwargs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cdp_plugin.envs.steprate", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--env-types", nargs="+", default=["pointmaze", "robosuite_lift", "robosuite_can", "pusht"]
    )
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument(
        "--obs-type", default=None, help="e.g. pixels_state (plugin tasks) or pixels_agent_pos (pusht)"
    )
    a = p.parse_args(argv)
    for env_type in a.env_types:
        kwargs = {"obs_type": a.obs_type} if a.obs_type else {}
        print(json.dumps(step_rate(env_type, a.steps, **kwargs)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
