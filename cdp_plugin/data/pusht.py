"""Push-T from Chi et al.'s human demonstrations, as LeRobot's ``--env.type=pusht`` (gym-pusht) sees it.

::

    python -m cdp_plugin.data.convert pusht ../shared/data/pusht/pusht_cchi_v7_replay.zarr --out data/pusht \\
        --obs keypoints            # or --obs image; [--episodes 10] (the first N) [--overwrite] [--no-verify]
    python -m cdp_plugin.data.pusht fidelity ../shared/data/pusht/pusht_cchi_v7_replay.zarr \\
        --dataset data/pusht --episodes 0,1,50,150      # simulator equality and open-loop replay

Source: ``pusht_cchi_v7_replay.zarr`` (diffusion_policy ``ReplayBuffer``: ``data/state`` = agent x, y,
block x, y, angle; ``data/action`` = target agent position in pixels; ``data/img`` 96x96 RGB float 0..255).
Every array used is first checked against the sha256 digests of ``../shared/data/README.md``.

Features, exactly what gym-pusht returns through LeRobot's ``preprocess_observation``:

- ``--obs keypoints`` (evaluate with ``--env.obs_type=environment_state_agent_pos``):
  ``observation.state`` = agent position (2), ``observation.environment_state`` = the 8 T keypoints (16,
  ``[x0, y0, x1, y1, ...]``) that gym-pusht's ``PushTEnv.get_keypoints`` gives for the recorded block pose
  (not the 9 stored keypoints of diffusion_policy's low-dim task), ``action`` (2, pixels);
- ``--obs image`` (``--env.obs_type=pixels_agent_pos``): ``observation.image`` 96x96 uint8 (the recorded
  frames) and ``observation.state`` (2), as ``lerobot/pusht``;
- both: ``next.reward`` = ``clip(coverage / 0.95, 0, 1)`` of the next frame's block pose, ``next.success`` =
  ``coverage > 0.95`` there, ``next.done`` on the last frame (gym-pusht's reward, as ``lerobot/pusht``).

The block pose is put into gym-pusht **angle first, then position** (as gym-pusht's ``add_tee`` and LeRobot's
own conversion do). gym-pusht's ``reset(options={"reset_to_state": ...})`` sets the position first, so the
angle then rotates the T about its centre of gravity and it lands up to 90 px from where it was recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cdp_plugin.data.writer import atomic_dataset, image_feature, vector_feature

FPS = 10
SUCCESS_COVERAGE = 0.95  # gym-pusht's success_threshold
TASK_TEXT = "Push the T-shaped block onto the T-shaped target."
FLAVOURS = {"keypoints": "environment_state_agent_pos", "image": "pixels_agent_pos"}  # -> gym-pusht obs_type
# First 16 hex digits of sha256 over each array's raw C-order bytes (../shared/data/README.md).
CHECKSUMS = {
    "meta/episode_ends": "82db02e667c59a83",
    "data/action": "6691b085749144b8",
    "data/state": "dcdc539bfdba9fc0",
    "data/keypoint": "2419980734c1d410",
    "data/img": "3f7650895d1a500d",
    "data/n_contacts": "3e4258a61c21da4a",
}


class PushTDataError(ValueError):
    """The Push-T source is missing, unreadable or not the published file; the message says which and why."""


# -- source --------------------------------------------------------------------------------------------------


def open_source(path: str | Path):
    """The zarr group at ``path`` (directory or ``.zip``), read-only."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise PushTDataError(
            f"{path}: no such file or directory (the Push-T replay buffer "
            "pusht_cchi_v7_replay.zarr; see ../shared/data/README.md)"
        )
    try:
        if path.suffix == ".zip":
            return zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
        return zarr.open_group(str(path), mode="r")
    except Exception as e:  # one line naming the file
        raise PushTDataError(f"{path}: cannot open as a zarr group ({type(e).__name__}: {e})") from e


def array_digest(arr, rows: int = 2048) -> str:
    """First 16 hex digits of sha256 over the array's raw C-order bytes, read ``rows`` rows at a time."""
    h = hashlib.sha256()
    for s in range(0, arr.shape[0], rows):
        h.update(np.ascontiguousarray(arr[s : s + rows]).tobytes())
    return h.hexdigest()[:16]


def verify_checksums(root, keys: list[str], source: str) -> dict[str, str]:
    """Check each ``keys`` array against :data:`CHECKSUMS`; raise one line naming the first that differs."""
    found = {}
    for key in keys:
        if key not in root:
            raise PushTDataError(f"{source}: missing array {key!r} (is this pusht_cchi_v7_replay.zarr?)")
        found[key] = array_digest(root[key])
        if found[key] != CHECKSUMS[key]:
            raise PushTDataError(
                f"{source}: {key} has checksum {found[key]}, expected {CHECKSUMS[key]} "
                "(../shared/data/README.md): not the published Push-T data; re-copy it, or pass --no-verify "
                "to convert it anyway"
            )
    return found


def episode_bounds(root) -> list[tuple[int, int]]:
    """``[start, end)`` of every episode from ``meta/episode_ends``."""
    ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


# -- gym-pusht -----------------------------------------------------------------------------------------------


def make_sim(obs_type: str = "environment_state_agent_pos"):
    """gym-pusht as LeRobot builds it (``gym.make("gym_pusht/PushT-v0")``), reset once; returns the env."""
    import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    import gymnasium as gym

    env = gym.make(
        "gym_pusht/PushT-v0",
        obs_type=obs_type,
        observation_width=96,
        observation_height=96,
        disable_env_checker=True,
    )
    env.reset(seed=0)
    return env


def place(env, state: np.ndarray, step: bool = True) -> None:
    """Put gym-pusht in a recorded ``[agent x, y, block x, y, angle]``: block angle first, then its position.

    ``step`` runs one physics step of ``dt`` (as ``reset_to_state`` does) so the contact state is refreshed.
    """
    u = env.unwrapped
    u.agent.position = [float(state[0]), float(state[1])]
    u.agent.velocity = (0.0, 0.0)
    u.block.velocity, u.block.angular_velocity = (0.0, 0.0), 0.0
    u.block.angle = float(state[4])
    u.block.position = [float(state[2]), float(state[3])]
    if step:
        u.space.step(u.dt)


def final_coverage(env, states: np.ndarray, actions: np.ndarray, warmup: int = 10) -> float:
    """Coverage after an episode's last action, whose result the recording does not store (it ends with the
    state before it): the state ``warmup`` steps earlier is placed (angle first, agent at rest) and the last
    ``warmup + 1`` recorded actions are replayed in gym-pusht.

    The agent's velocity, which a recorded state lacks, is forgotten by the PD controller (factor
    ``(1 - k_v dt)^10 = 0.8^10 = 0.11`` per 0.1 s step), but contacts make the block's path sensitive to it:
    with 10 warm-up steps the result agrees with a full open-loop replay to 1e-3 (episodes 0-3, 150; 0 or 2
    warm-up steps were off by up to 0.03).
    """
    k = min(warmup, len(states) - 1)
    place(env, states[-1 - k], step=False)
    for a in actions[len(actions) - 1 - k :]:
        _, _, _, _, info = env.unwrapped.step(np.asarray(a, dtype=np.float64))
    return float(info["coverage"])


def block_observation(env, state: np.ndarray) -> tuple[np.ndarray, float]:
    """gym-pusht's 8 keypoints (16) and goal coverage of the block placed at a recorded pose (no physics)."""
    place(env, state, step=False)
    u = env.unwrapped
    return u.get_keypoints(u._block_shapes).flatten(), float(u._get_coverage())


# -- conversion ----------------------------------------------------------------------------------------------


@dataclass
class PushTReport:
    """What a conversion wrote (printed as JSON, stored in ``meta/cdp_provenance.json``)."""

    obs: str
    episodes_written: int = 0
    frames: int = 0
    checksums: dict = field(default_factory=dict)
    seconds: float = 0.0
    episode_lengths: list[int] = field(default_factory=list)
    demo_success_rate: float = (
        0.0  # share of episodes whose block reaches coverage > 0.95 (LeRobot's success)
    )

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("episode_lengths")
        return d


def pusht_features(obs: str) -> dict:
    """Feature specs of a flavour (``keypoints`` or ``image``): gym-pusht's keys after LeRobot's mapping."""
    from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE

    feats = {OBS_STATE: vector_feature(2, "state", ["x", "y"])}
    if obs == "keypoints":
        feats[OBS_ENV_STATE] = vector_feature(16, "env_state", [f"{c}{i}" for i in range(8) for c in "xy"])
    elif obs == "image":
        feats[OBS_IMAGE] = image_feature(96, 96)
    else:
        raise ValueError(f"obs must be one of {sorted(FLAVOURS)}, got {obs!r}")
    feats[ACTION] = vector_feature(2, "action", ["x", "y"])
    feats["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    feats["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    feats["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    return feats


def _check_finite(name: str, arr: np.ndarray, source: str, episode: int) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        step = int(np.argwhere(bad)[0][0])
        raise PushTDataError(f"{source}, episode {episode}, key {name!r}: non-finite value at step {step}")


def episode_frames(root, env, s: int, e: int, obs: str, source: str, episode: int) -> dict[str, np.ndarray]:
    """Frames ``s:e`` of the replay buffer in the flavour's features."""
    from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE

    state = np.asarray(root["data/state"][s:e], dtype=np.float64)
    action = np.asarray(root["data/action"][s:e], dtype=np.float32)
    _check_finite("data/state", state, source, episode)
    _check_finite("data/action", action, source, episode)
    kps, cov = zip(*(block_observation(env, st) for st in state), strict=True)
    cov = np.asarray(cov)
    next_cov = np.concatenate([cov[1:], [final_coverage(env, state, action)]])
    frames = {
        OBS_STATE: state[:, :2].astype(np.float32),
        ACTION: action,
        "next.reward": np.clip(next_cov / SUCCESS_COVERAGE, 0, 1).astype(np.float32)[:, None],
        "next.success": (next_cov > SUCCESS_COVERAGE)[:, None],
        "next.done": (np.arange(e - s) == e - s - 1)[:, None],
    }
    if obs == "keypoints":
        frames[OBS_ENV_STATE] = np.stack(kps).astype(np.float32)
    else:
        img = np.asarray(root["data/img"][s:e])
        if img.shape[1:] != (96, 96, 3):
            raise PushTDataError(
                f"{source}, episode {episode}, key 'data/img': shape {img.shape[1:]}, expected (96, 96, 3)"
            )
        _check_finite("data/img", img, source, episode)
        frames[OBS_IMAGE] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    frames["_coverage"] = cov
    return frames


def convert_pusht(
    source: str | Path,
    out: str | Path,
    *,
    obs: str = "keypoints",
    episodes: int | None = None,
    verify: bool = True,
    overwrite: bool = False,
    repo_id: str | None = None,
    progress: bool = True,
) -> PushTReport:
    """Convert the first ``episodes`` (all if None) Push-T demonstrations into a LeRobotDataset at ``out``."""
    if obs not in FLAVOURS:
        raise ValueError(f"obs must be one of {sorted(FLAVOURS)}, got {obs!r}")
    src = str(source)
    root = open_source(source)
    keys = ["meta/episode_ends", "data/state", "data/action"] + (["data/img"] if obs == "image" else [])
    report = PushTReport(obs=obs)
    t0 = time.perf_counter()
    if verify:
        report.checksums = verify_checksums(root, keys, src)
    else:
        for k in keys:
            if k not in root:
                raise PushTDataError(f"{src}: missing array {k!r} (is this pusht_cchi_v7_replay.zarr?)")
    bounds = episode_bounds(root)
    if episodes is not None:
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        bounds = bounds[:episodes]
    env = make_sim()
    prov = {
        "converter": "cdp_plugin.data.pusht",
        "source": str(Path(source).absolute()),
        "obs": obs,
        "gym_pusht_obs_type": FLAVOURS[obs],
        "episodes": len(bounds),
        "verified": verify,
        "python": platform.python_version(),
        "placement": "block angle first, then position",
    }
    successes = 0
    with atomic_dataset(
        out,
        repo_id=repo_id or f"local/pusht_{obs}",
        fps=FPS,
        features=pusht_features(obs),
        robot_type="2d pointer",
        overwrite=overwrite,
        provenance=prov,
    ) as ds:
        for i, (s, e) in enumerate(tqdm(bounds, desc=f"pusht {obs}", unit="ep", disable=not progress)):
            frames = episode_frames(root, env, s, e, obs, src, i)
            frames.pop("_coverage")
            successes += int(frames["next.success"].any())  # coverage > 0.95 after some recorded action
            for t in range(e - s):
                ds.add_frame({**{k: v[t] for k, v in frames.items()}, "task": TASK_TEXT})
            ds.save_episode()
            report.episodes_written += 1
            report.frames += e - s
            report.episode_lengths.append(e - s)
        report.demo_success_rate = round(successes / max(len(bounds), 1), 4)
        report.seconds = round(time.perf_counter() - t0, 2)
        prov["report"] = report.summary()
    env.close()
    return report


def generate_dataset(cfg):
    """The task table's dataset entry for ``pusht`` (:mod:`cdp_plugin.envs.tasks`): converts the first
    ``cfg.episodes`` demonstrations of ``cfg.source`` (default: the task's); ``cfg.images``: image flavour."""
    from cdp_plugin.data.generate import GenerateReport
    from cdp_plugin.envs.tasks import get_task

    spec = get_task("pusht")
    source = cfg.source or spec.source()
    rep = convert_pusht(
        source,
        cfg.out,
        obs="image" if cfg.images else "keypoints",
        episodes=cfg.episodes,
        overwrite=cfg.overwrite,
        repo_id=cfg.repo_id,
    )
    return GenerateReport(
        task="pusht",
        episodes_written=rep.episodes_written,
        attempts=rep.episodes_written,
        successes=round(rep.demo_success_rate * rep.episodes_written),
        frames=rep.frames,
        total_seconds=rep.seconds,
        episode_lengths=rep.episode_lengths,
    )


# -- fidelity against the simulator --------------------------------------------------------------------------


def _angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def state_equality(source: str | Path, dataset: str | Path, episodes: list[int], step: bool = True) -> dict:
    """For every frame of ``episodes``: put gym-pusht in the recorded state (angle first, then position, and
    with ``step`` one 10 ms physics step, as ``reset_to_state`` does) and compare its
    ``environment_state_agent_pos`` observation with the converted frame.

    Returns the largest absolute differences in pixels (keypoints, agent position) over those frames. Without
    the step the bound is float32 rounding of the stored values (|x| <= 512: 512 * 2**-24 = 3e-5 px); the step
    resolves contacts between agent and block, which can move the block a little.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.constants import OBS_ENV_STATE, OBS_STATE

    root = open_source(source)
    bounds = episode_bounds(root)
    ds = LeRobotDataset("local/pusht_check", root=dataset)
    hf = ds.hf_dataset.with_format("numpy")
    kp_all, pos_all = np.stack(hf[OBS_ENV_STATE]), np.stack(hf[OBS_STATE])
    env = make_sim("environment_state_agent_pos")
    worst_kp, worst_pos, frames = 0.0, 0.0, 0
    for ep in episodes:
        s, e = bounds[ep]
        lo = int(ds.meta.episodes["dataset_from_index"][ep])
        if int(ds.meta.episodes["length"][ep]) != e - s:
            raise PushTDataError(
                f"{dataset}: episode {ep} has {ds.meta.episodes['length'][ep]} frames, the source {e - s}"
            )
        state = np.asarray(root["data/state"][s:e], dtype=np.float64)
        for t in range(e - s):
            place(env, state[t], step=step)
            o = env.unwrapped.get_obs()
            worst_kp = max(worst_kp, float(np.abs(o["environment_state"] - kp_all[lo + t]).max()))
            worst_pos = max(worst_pos, float(np.abs(o["agent_pos"] - pos_all[lo + t]).max()))
            frames += 1
    env.close()
    return {
        "episodes": list(episodes),
        "frames": frames,
        "physics_step": step,
        "max_abs_keypoint_px": worst_kp,
        "max_abs_agent_px": worst_pos,
    }


def replay(source: str | Path, episode: int, root=None, env=None) -> dict:
    """Restore the recorded start (angle first) and replay the recorded actions open loop in gym-pusht.

    Reports the block's largest position drift (px) and angle drift (rad) from the recording over the episode,
    and the max coverage the replay reaches against the recording's own.
    """
    root = root if root is not None else open_source(source)
    s, e = episode_bounds(root)[episode]
    state = np.asarray(root["data/state"][s:e], dtype=np.float64)
    action = np.asarray(root["data/action"][s:e], dtype=np.float64)
    own_env = env is None
    env = env if env is not None else make_sim("environment_state_agent_pos")
    ref = make_sim("environment_state_agent_pos")  # a second sim only to measure the recording's coverage
    recorded_cov = max(block_observation(ref, st)[1] for st in state)
    final_cov = final_coverage(ref, state, action)
    ref.close()
    place(env, state[0], step=True)
    pos_drift, ang_drift, cov = [], [], []
    for t in range(e - s):  # every recorded action, the last one included (its result is not recorded)
        _, _, _, _, info = env.unwrapped.step(action[t])
        cov.append(float(info["coverage"]))
        if t + 1 < e - s:
            pose = np.asarray(info["block_pose"])
            pos_drift.append(float(np.linalg.norm(pose[:2] - state[t + 1, 2:4])))
            ang_drift.append(float(_angle_diff(pose[2], state[t + 1, 4])))
    if own_env:
        env.close()
    return {
        "episode": episode,
        "steps": e - s,
        "max_block_drift_px": max(pos_drift, default=0.0),
        "final_block_drift_px": pos_drift[-1] if pos_drift else 0.0,
        "max_angle_drift_rad": max(ang_drift, default=0.0),
        "replay_max_coverage": max(cov, default=0.0),
        "recorded_max_coverage": recorded_cov,
        "recorded_max_coverage_with_last_action": max(recorded_cov, final_cov),
    }


def fidelity(
    source: str | Path, dataset: str | Path | None, episodes: list[int], progress: bool = True
) -> dict:
    """Simulator equality of the converted keypoint frames (if ``dataset``) and open-loop replays."""
    root = open_source(source)
    n = len(episode_bounds(root))
    bad = [ep for ep in episodes if not 0 <= ep < n]
    if bad:
        raise ValueError(f"episodes {bad} out of range: the source has {n} episodes (0..{n - 1})")
    out: dict = {}
    if dataset is not None:
        out["state_equality_placed"] = state_equality(source, dataset, episodes, step=False)
        out["state_equality_after_step"] = state_equality(source, dataset, episodes, step=True)
    env = make_sim("environment_state_agent_pos")
    rows = [
        replay(source, ep, root=root, env=env)
        for ep in tqdm(episodes, desc="pusht replay", unit="ep", disable=not progress)
    ]
    env.close()
    drift = np.array([r["max_block_drift_px"] for r in rows])
    out["replays"] = rows
    out["replay_summary"] = {
        "episodes": len(rows),
        "within_1px": int((drift <= 1.0).sum()),
        "p90_max_drift_px": float(np.percentile(drift, 90)),
        "mean_replay_max_coverage": float(np.mean([r["replay_max_coverage"] for r in rows])),
        "mean_recorded_max_coverage": float(np.mean([r["recorded_max_coverage"] for r in rows])),
        "mean_recorded_max_coverage_with_last_action": float(
            np.mean([r["recorded_max_coverage_with_last_action"] for r in rows])
        ),
        "median_replay_max_coverage": float(np.median([r["replay_max_coverage"] for r in rows])),
        "replay_success_rate": float(np.mean([r["replay_max_coverage"] > SUCCESS_COVERAGE for r in rows])),
    }
    return out


# -- CLI -----------------------------------------------------------------------------------------------------


def _episode_list(text: str) -> list[int]:
    if text == "all":
        return []
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def convert_main(argv: list[str] | None = None) -> int:
    """``python -m cdp_plugin.data.convert pusht <zarr> --out DIR --obs keypoints|image``."""
    p = argparse.ArgumentParser(
        prog="python -m cdp_plugin.data.convert pusht",
        description="Push-T human demonstrations -> LeRobotDataset (gym-pusht features)",
    )
    p.add_argument("source", type=Path, help="pusht_cchi_v7_replay.zarr (directory or .zip)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--obs",
        choices=sorted(FLAVOURS),
        default="keypoints",
        help="keypoints: state + 8 keypoints (environment_state_agent_pos); image: 96x96 image + state",
    )
    p.add_argument("--episodes", type=int, default=None, help="convert only the first N episodes")
    p.add_argument("--repo-id", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum check against the README's")
    a = p.parse_args(argv)
    try:
        rep = convert_pusht(
            a.source,
            a.out,
            obs=a.obs,
            episodes=a.episodes,
            verify=not a.no_verify,
            overwrite=a.overwrite,
            repo_id=a.repo_id,
        )
    except (PushTDataError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(a.out), **rep.summary()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cdp_plugin.data.pusht", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("convert", help="same as python -m cdp_plugin.data.convert pusht ...", add_help=False)
    pf = sub.add_parser("fidelity", help="simulator equality of a converted dataset and open-loop replays")
    pf.add_argument("source", type=Path)
    pf.add_argument(
        "--dataset", type=Path, default=None, help="a keypoints conversion to check frame by frame"
    )
    pf.add_argument("--episodes", default="0,1,50,150", help="e.g. 0,1,50,150 or 0-9 or all (replays)")
    pf.add_argument("--json", type=Path, default=None, help="also write the result here")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        return convert_main(argv[1:])
    a = p.parse_args(argv)
    episodes = _episode_list(a.episodes) or list(range(len(episode_bounds(open_source(a.source)))))
    try:
        res = fidelity(a.source, a.dataset, episodes)
    except (PushTDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(
        res if len(episodes) <= 20 else {k: v for k, v in res.items() if k != "replays"}, indent=1
    )
    print(text)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
