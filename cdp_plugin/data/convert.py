"""Convert robomimic hdf5, diffusion_policy zarr and Minari datasets into LeRobotDataset v3.

::

    python -m cdp_plugin.data.convert robomimic lift/ph/low_dim_v15.hdf5 --out data/lift_ph
    python -m cdp_plugin.data.convert zarr pusht/pusht_cchi_v7_replay.zarr --out data/pusht_dp --fps 10
    python -m cdp_plugin.data.convert minari D4RL/pointmaze/medium-v2 --out data/pointmaze_minari
    python -m cdp_plugin.data.convert pusht pusht_cchi_v7_replay.zarr --out data/pusht --obs keypoints
    # (pusht: --obs keypoints or --obs image)

Mapping (the same for every source; override with
``--state-keys/--env-state-keys/--image-keys/--action-key``):

- ``observation.state``: the ``--state-keys`` concatenated (flattened per frame),
- ``observation.environment_state``: the ``--env-state-keys`` concatenated (omitted when none),
- images (uint8 ``(T, H, W, 3)``): ``observation.image`` when there is one, else
  ``observation.images.<name>``,
- ``action``; ``next.reward`` and ``next.done`` when the source has them.

Defaults: robomimic ``robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos`` / ``object`` / all ``*_image``
keys — the same layout as ``--env.type=robosuite_lift|robosuite_can``; zarr ``state`` / ``keypoint`` (if
present) / every ``(N, H, W, 3)`` array / ``action`` (Push-T's replay buffer; float images in 0..255 or 0..1
are stored as uint8); Minari: an array observation is the state, a dict observation maps ``observation`` to
the state and ``desired_goal`` to the environment state.

Every array is checked before anything is written (present, readable, same length as the actions, finite
after the cast to float32, and for zarr: every chunk stored, since zarr reads a missing chunk as its fill
value); a problem raises :class:`DatasetFormatError` naming the file, the episode, the frame and the key. The
output path is checked before any work, appears only once complete, and ``--overwrite`` replaces only a
dataset this tool wrote (see :mod:`cdp_plugin.data.writer`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cdp_plugin.data.writer import (
    OutputPathError,
    atomic_dataset,
    check_output_path,
    image_feature,
    vector_feature,
)


class DatasetFormatError(ValueError):
    """A source dataset is unreadable or inconsistent; the message names the file, episode and key."""

    def __init__(self, source: str, message: str, episode: str | None = None, key: str | None = None):
        where = source + (f", episode {episode}" if episode is not None else "")
        where += f", key {key!r}" if key else ""
        super().__init__(f"{where}: {message}")
        self.source, self.episode, self.key = source, episode, key


@dataclass
class KeyMap:
    """Which source keys become which LeRobot features."""

    state_keys: list[str]
    env_state_keys: list[str] = field(default_factory=list)
    image_keys: list[str] = field(default_factory=list)
    action_key: str = "action"

    def image_feature_name(self, key: str) -> str:
        if len(self.image_keys) == 1:
            return "observation.image"
        name = key.removesuffix("_image").removesuffix("_img")
        return f"observation.images.{name}"


@dataclass
class Episode:
    """One source episode: ``name`` for error messages and a loader returning ``{key: array (T, ...)}``."""

    name: str
    load: Callable[[], dict[str, np.ndarray]]


# -- validation and frame assembly -------------------------------------------------------------------------


def _read(source: str, episode: str, key: str, read: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        return np.asarray(read())
    except DatasetFormatError:
        raise
    except KeyError as e:
        raise DatasetFormatError(source, "missing key", episode, key) from e
    except Exception as e:  # truncated/corrupt chunks surface as OSError, ValueError, RuntimeError, ...
        raise DatasetFormatError(source, f"cannot read data ({type(e).__name__}: {e})", episode, key) from e


def episode_frames(source: str, ep: Episode, keys: KeyMap) -> dict[str, np.ndarray]:
    """Load one episode and turn it into LeRobot feature arrays, validating lengths, dtypes and finiteness."""
    raw = ep.load()
    if keys.action_key not in raw:
        raise DatasetFormatError(source, "missing key", ep.name, keys.action_key)
    action = raw[keys.action_key]
    n = len(action)
    if n == 0:
        raise DatasetFormatError(source, "empty episode (0 actions)", ep.name, keys.action_key)

    def get(key: str) -> np.ndarray:
        if key not in raw:
            raise DatasetFormatError(source, f"missing key (available: {sorted(raw)})", ep.name, key)
        arr = raw[key]
        if len(arr) != n:
            raise DatasetFormatError(
                source, f"length {len(arr)} does not match {n} actions ({keys.action_key!r})", ep.name, key
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr.reshape(n, -1)))[0, 0])
            raise DatasetFormatError(source, f"non-finite value at frame {bad}", ep.name, key)
        return arr

    def f32(key: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` as float32, checked after the cast (float64 beyond +-3.4e38 becomes +-inf)."""
        with np.errstate(over="ignore"):
            out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            t, j = (int(i) for i in np.argwhere(~np.isfinite(out.reshape(n, -1)))[0])
            raise DatasetFormatError(
                source,
                f"value {arr.reshape(n, -1)[t, j]!r} at frame {t} is out of float32 range (inf after "
                "the cast); rescale the data",
                ep.name,
                key,
            )
        return out

    def vec(key_list: list[str]) -> np.ndarray:
        return np.concatenate([f32(k, get(k).reshape(n, -1)) for k in key_list], axis=1)

    frames = {"observation.state": vec(keys.state_keys), "action": vec([keys.action_key])}
    if keys.env_state_keys:
        frames["observation.environment_state"] = vec(keys.env_state_keys)
    for k in keys.image_keys:
        img = get(k)
        if img.ndim != 4 or img.shape[-1] != 3 or img.dtype.kind not in "uif":
            raise DatasetFormatError(
                source, f"expected images of shape (T, H, W, 3), got {img.dtype} {img.shape}", ep.name, k
            )
        frames[keys.image_feature_name(k)] = to_uint8_images(img)
    if "rewards" in raw:
        frames["next.reward"] = f32("rewards", get("rewards").reshape(n, 1))
    if "dones" in raw:
        frames["next.done"] = get("dones").reshape(n, 1).astype(bool)
    return frames


def to_uint8_images(img: np.ndarray) -> np.ndarray:
    """uint8 as is; float images in [0, 1] are scaled by 255, others (e.g. Push-T's float 0..255) rounded."""
    if img.dtype == np.uint8:
        return img
    x = img.astype(np.float64)
    if img.dtype.kind == "f" and x.max(initial=0.0) <= 1.0:
        x = x * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def frame_features(frames: dict[str, np.ndarray], keys: KeyMap) -> dict:
    """LeRobot feature specs for the arrays returned by :func:`episode_frames`."""
    feats = {}
    for name, arr in frames.items():
        if arr.ndim == 4:
            feats[name] = image_feature(arr.shape[1], arr.shape[2])
        elif name == "next.done":
            feats[name] = {"dtype": "bool", "shape": (1,), "names": None}
        elif name == "next.reward":
            feats[name] = {"dtype": "float32", "shape": (1,), "names": None}
        else:
            prefixes = {"observation.state": "state", "observation.environment_state": "env_state"}
            prefix = prefixes.get(name, name)
            feats[name] = vector_feature(arr.shape[1], prefix)
    return feats


def write_lerobot(
    source: str,
    episodes: list[Episode],
    keys: KeyMap,
    out: Path,
    *,
    fps: int,
    task: str,
    repo_id: str,
    overwrite: bool = False,
    provenance: dict | None = None,
) -> dict:
    """Validate every episode, then write them all; return a summary (episodes, frames, lengths)."""
    check_output_path(out, overwrite)  # an unusable --out is refused before any work
    if not episodes:
        raise DatasetFormatError(source, "no episodes found")
    # Validate everything before creating the output (cheap for low-dim data; images are loaded twice).
    lengths, feats = [], None
    for ep in tqdm(episodes, desc=f"checking {Path(source).name}", unit="ep"):
        frames = episode_frames(source, ep, keys)
        ep_feats = frame_features(frames, keys)
        if feats is None:
            feats = ep_feats
        elif ep_feats != feats:
            diff = {k for k in set(feats) | set(ep_feats) if feats.get(k) != ep_feats.get(k)}
            raise DatasetFormatError(
                source, f"feature shapes differ from the first episode for {sorted(diff)}", ep.name
            )
        lengths.append(len(frames["action"]))
    with atomic_dataset(
        out, repo_id=repo_id, fps=fps, features=feats, overwrite=overwrite, provenance=provenance
    ) as ds:
        for ep in tqdm(episodes, desc=f"writing {Path(out).name}", unit="ep"):
            frames = episode_frames(source, ep, keys)
            for t in range(len(frames["action"])):
                ds.add_frame({**{k: v[t] for k, v in frames.items()}, "task": task})
            ds.save_episode()
    return {"episodes": len(episodes), "frames": int(sum(lengths)), "episode_lengths": lengths}


# -- robomimic ---------------------------------------------------------------------------------------------

ROBOMIMIC_STATE_KEYS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]


def _open_hdf5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except Exception as e:
        raise DatasetFormatError(str(path), f"cannot open as HDF5 (corrupt or truncated?): {e}") from e


def robomimic_episodes(
    path: Path, filter_key: str | None = None
) -> tuple[list[Episode], dict, dict[str, tuple]]:
    """List the demos of a robomimic hdf5 file (``data/demo_<i>``, sorted by ``i``).

    Returns the episodes, the ``env_args`` attribute (parsed) and ``{obs key: (shape, dtype)}`` of the first
    demo.
    """
    src = str(path)
    f = _open_hdf5(path)
    try:
        if "data" not in f:
            raise DatasetFormatError(src, "missing group 'data'", key="data")
        names = [k for k in f["data"] if k.startswith("demo_")]
        if filter_key is not None:
            if f"mask/{filter_key}" not in f:
                raise DatasetFormatError(src, "missing filter key", key=f"mask/{filter_key}")
            allowed = {n.decode() if isinstance(n, bytes) else str(n) for n in f[f"mask/{filter_key}"][:]}
            names = [n for n in names if n in allowed]
        names.sort(key=lambda n: int(n.split("_")[1]) if n.split("_")[1].isdigit() else n)
        env_args = json.loads(f["data"].attrs.get("env_args", "{}"))
        obs_info = {}
        if names:
            if "obs" not in f[f"data/{names[0]}"]:
                raise DatasetFormatError(src, "missing group", names[0], "obs")
            obs_info = {k: (v.shape[1:], v.dtype) for k, v in f[f"data/{names[0]}/obs"].items()}
    except DatasetFormatError:
        f.close()
        raise
    except Exception as e:
        f.close()
        raise DatasetFormatError(src, f"cannot read structure ({type(e).__name__}: {e})") from e
    f.close()

    def loader(name: str) -> Callable[[], dict[str, np.ndarray]]:
        def load() -> dict[str, np.ndarray]:
            with _open_hdf5(path) as h:
                if f"data/{name}" not in h:
                    raise DatasetFormatError(src, "missing group", name, f"data/{name}")
                g = h[f"data/{name}"]
                out = {}
                if "actions" not in g:
                    raise DatasetFormatError(src, "missing key", name, "actions")
                for key in ("actions", "rewards", "dones"):
                    if key in g:
                        name_out = "action" if key == "actions" else key
                        out[name_out] = _read(src, name, key, lambda k=key: g[k][()])
                if "obs" not in g:
                    raise DatasetFormatError(src, "missing group", name, "obs")
                for key in g["obs"]:
                    out[key] = _read(src, name, f"obs/{key}", lambda k=key: g["obs"][k][()])
                return out

        return load

    return [Episode(n, loader(n)) for n in names], env_args, obs_info


def robomimic_keymap(obs_info: dict[str, tuple]) -> KeyMap:
    """Default robomimic mapping: robot eef/gripper -> state, ``object`` -> environment state, ``*_image``."""
    state = [k for k in ROBOMIMIC_STATE_KEYS if k in obs_info]
    if not state:
        state = [k for k, (shape, dtype) in obs_info.items() if k != "object" and len(shape) <= 1]
    env_state = ["object"] if "object" in obs_info else []
    images = [k for k, (shape, dtype) in obs_info.items() if len(shape) == 3 and np.dtype(dtype) == np.uint8]
    return KeyMap(state_keys=state, env_state_keys=env_state, image_keys=images)


def convert_robomimic(
    path: str | Path,
    out: str | Path,
    *,
    keys: KeyMap | None = None,
    filter_key: str | None = None,
    fps: int | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> dict:
    """robomimic hdf5 -> LeRobotDataset. ``fps`` defaults to ``env_args.env_kwargs.control_freq`` (else
    20)."""
    path = Path(path)
    check_output_path(out, overwrite)
    episodes, env_args, obs_info = robomimic_episodes(path, filter_key)
    keys = keys or robomimic_keymap(obs_info)
    fps = fps or int(env_args.get("env_kwargs", {}).get("control_freq", 20))
    task = str(env_args.get("env_name", path.stem))
    prov = {
        "converter": "robomimic",
        "source": str(path.absolute()),
        "filter_key": filter_key,
        "keys": keys.__dict__,
        "env_args": env_args,
    }
    return write_lerobot(
        str(path),
        episodes,
        keys,
        Path(out),
        fps=fps,
        task=task,
        repo_id=repo_id or f"local/{path.stem}",
        overwrite=overwrite,
        provenance=prov,
    )


# -- diffusion_policy zarr ReplayBuffer --------------------------------------------------------------------


def _open_zarr(path: Path):
    import zarr

    src = str(path)
    try:
        if path.suffix == ".zip":
            store = zarr.storage.ZipStore(path, mode="r")
            return zarr.open_group(store, mode="r")
        return zarr.open_group(str(path), mode="r")
    except Exception as e:
        raise DatasetFormatError(
            src, f"cannot open as a zarr group (corrupt or not a ReplayBuffer?): {e}"
        ) from e


def zarr_episodes(path: Path) -> tuple[list[Episode], dict[str, tuple]]:
    """Split a diffusion_policy ReplayBuffer (``data/<key>`` of length N, ``meta/episode_ends``) into
    episodes."""
    src = str(path)
    root = _open_zarr(path)
    for group in ("data", "meta"):
        if group not in root:
            raise DatasetFormatError(src, "missing group", key=group)
    if "episode_ends" not in root["meta"]:
        raise DatasetFormatError(src, "missing array", key="meta/episode_ends")
    ends = _read(src, "-", "meta/episode_ends", lambda: root["meta/episode_ends"][:]).astype(np.int64)
    data = root["data"]
    info = {k: (data[k].shape, data[k].dtype) for k in data.array_keys()}
    total = {k: shape[0] for k, (shape, _) in info.items()}
    if len(ends) and (np.any(np.diff(ends) <= 0) or ends[0] <= 0):
        raise DatasetFormatError(
            src,
            f"episode_ends must be strictly increasing and positive, got {ends[:10]}...",
            key="meta/episode_ends",
        )
    for k, n in total.items():
        if len(ends) and n != ends[-1]:
            raise DatasetFormatError(
                src,
                f"has {n} steps but meta/episode_ends ends at {ends[-1]}",
                episode=str(len(ends) - 1),
                key=f"data/{k}",
            )
    starts = np.concatenate([[0], ends[:-1]])

    def loader(i: int, s: int, e: int) -> Callable[[], dict[str, np.ndarray]]:
        def load() -> dict[str, np.ndarray]:
            return {k: _read(src, str(i), f"data/{k}", lambda k=k: data[k][s:e]) for k in info}

        return load

    return [Episode(str(i), loader(i, int(s), int(e))) for i, (s, e) in enumerate(zip(starts, ends))], info


def missing_chunks(arr) -> list[tuple[str, int, int]]:
    """Chunks of a zarr array absent from its store, as ``(chunk key, first row, last row)``.

    zarr returns the fill value for a missing chunk, so a lost chunk file would read as real zeros. Note that
    zarr >= 3 by default does not store chunks that hold only the fill value (``write_empty_chunks=False``).
    """
    import itertools

    from zarr.core.sync import sync

    if arr.nchunks_initialized >= arr.nchunks:
        return []
    grid = [-(-s // c) for s, c in zip(arr.shape, arr.chunks, strict=True)]
    out = []
    for coords in itertools.product(*map(range, grid)):
        key = arr.metadata.encode_chunk_key(coords)
        if not sync((arr.store_path / key).exists()):
            lo = coords[0] * arr.chunks[0] if coords else 0
            hi = min(lo + arr.chunks[0], arr.shape[0]) - 1 if coords else 0
            out.append((key, lo, hi))
    return out


def check_zarr_chunks(path: Path, names: list[str]) -> None:
    """Refuse (:class:`DatasetFormatError`) if one of the arrays ``names`` (e.g. ``data/action``) lacks a
    chunk."""
    root = _open_zarr(path)
    for name in names:
        miss = missing_chunks(root[name])
        if miss:
            shown = ", ".join(f"{k} (rows {lo}-{hi})" for k, lo, hi in miss[:5])
            shown += " ..." if len(miss) > 5 else ""
            raise DatasetFormatError(
                str(path),
                f"{len(miss)} chunk(s) missing from the store: {shown}; zarr would read them as "
                f"the fill value {root[name].fill_value!r}. Restore the file, or pass --allow-missing-chunks "
                "if they were skipped because they hold only the fill value (zarr >= 3 "
                "write_empty_chunks=False)",
                key=name,
            )


def zarr_keymap(info: dict[str, tuple]) -> KeyMap:
    """Default ReplayBuffer mapping (Push-T): ``state`` / ``keypoint`` / uint8 ``(N,H,W,3)`` arrays /
    ``action``."""
    images = [k for k, (shape, dtype) in info.items() if len(shape) == 4 and shape[-1] == 3]
    state = ["state"] if "state" in info else [k for k in info if k.endswith("state") or k.endswith("pos")]
    env_state = ["keypoint"] if "keypoint" in info else []
    return KeyMap(state_keys=state, env_state_keys=env_state, image_keys=images)


def convert_zarr(
    path: str | Path,
    out: str | Path,
    *,
    keys: KeyMap | None = None,
    fps: int = 10,
    task: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    allow_missing_chunks: bool = False,
) -> dict:
    """diffusion_policy zarr ReplayBuffer (zarr v2 format, directory or ``.zip``) -> LeRobotDataset.

    Arrays with chunks missing from the store are refused unless ``allow_missing_chunks`` (see
    :func:`missing_chunks`).
    """
    path = Path(path)
    check_output_path(out, overwrite)
    episodes, info = zarr_episodes(path)
    keys = keys or zarr_keymap(info)
    if not keys.state_keys:
        raise DatasetFormatError(str(path), f"no state keys found among {sorted(info)}; pass --state-keys")
    if not allow_missing_chunks:
        used = [*keys.state_keys, *keys.env_state_keys, *keys.image_keys, keys.action_key]
        check_zarr_chunks(path, ["meta/episode_ends", *(f"data/{k}" for k in used if k in info)])
    prov = {"converter": "zarr", "source": str(path.absolute()), "keys": keys.__dict__}
    stem = path.name.split(".")[0]
    return write_lerobot(
        str(path),
        episodes,
        keys,
        Path(out),
        fps=fps,
        task=task or stem,
        repo_id=repo_id or f"local/{stem}",
        overwrite=overwrite,
        provenance=prov,
    )


# -- Minari -------------------------------------------------------------------------------------------------


def _flatten_minari_obs(obs) -> dict[str, np.ndarray]:
    if isinstance(obs, dict):
        out = {}
        for k, v in obs.items():
            for kk, vv in _flatten_minari_obs(v).items():
                out[k if kk == "" else f"{k}/{kk}"] = vv
        return out
    return {"": np.asarray(obs)}


def minari_episodes(dataset_id: str) -> tuple[list[Episode], dict, int | None]:
    """Episodes of a locally stored Minari dataset (never downloads). Returns episodes, obs keys, fps if
    known."""
    import minari

    local = minari.list_local_datasets()
    if dataset_id not in local:
        raise DatasetFormatError(
            dataset_id,
            f"not a local Minari dataset (local: {sorted(local)}); this converter never "
            "downloads — set MINARI_DATASETS_PATH or run `minari download` elsewhere",
        )
    ds = minari.load_dataset(dataset_id)
    ids = sorted(int(i) for i in ds.episode_indices)
    fps = None
    try:
        fps = ds.recover_environment().metadata.get("render_fps")
    except Exception:
        pass

    def loader(i: int) -> Callable[[], dict[str, np.ndarray]]:
        def load() -> dict[str, np.ndarray]:
            try:
                ep = ds[i]
            except Exception as e:
                raise DatasetFormatError(
                    dataset_id, f"cannot read episode ({type(e).__name__}: {e})", str(i)
                ) from e
            obs = {k: v[:-1] for k, v in _flatten_minari_obs(ep.observations).items()}  # T+1 observations
            obs = {("observation" if k == "" else k): v for k, v in obs.items()}
            dones = np.logical_or(ep.terminations, ep.truncations)
            return {
                **obs,
                "action": np.asarray(ep.actions),
                "rewards": np.asarray(ep.rewards),
                "dones": dones,
            }

        return load

    first = loader(ids[0])() if ids else {}
    return [Episode(str(i), loader(i)) for i in ids], {k: v.shape[1:] for k, v in first.items()}, fps


def minari_keymap(info: dict) -> KeyMap:
    """``observation`` -> state, ``desired_goal`` -> environment state (goal-conditioned datasets)."""
    env_state = ["desired_goal"] if "desired_goal" in info else []
    return KeyMap(state_keys=["observation"], env_state_keys=env_state)


def convert_minari(
    dataset_id: str,
    out: str | Path,
    *,
    keys: KeyMap | None = None,
    fps: int | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Local Minari dataset -> LeRobotDataset (observation ``t`` paired with action ``t``; the last
    observation dropped)."""
    check_output_path(out, overwrite)
    episodes, info, env_fps = minari_episodes(dataset_id)
    keys = keys or minari_keymap(info)
    fps = fps or int(env_fps or 30)
    prov = {"converter": "minari", "source": dataset_id, "keys": keys.__dict__}
    return write_lerobot(
        dataset_id,
        episodes,
        keys,
        Path(out),
        fps=fps,
        task=dataset_id,
        repo_id=repo_id or f"local/{dataset_id.replace('/', '_')}",
        overwrite=overwrite,
        provenance=prov,
    )


# -- CLI ----------------------------------------------------------------------------------------------------


def _keys_from_args(a) -> KeyMap | None:
    if a.state_keys is None:
        if a.env_state_keys or a.image_keys:
            raise SystemExit("--env-state-keys/--image-keys need --state-keys as well")
        return None
    split = lambda s: [k for k in (s or "").split(",") if k]  # noqa: E731
    return KeyMap(
        state_keys=split(a.state_keys),
        env_state_keys=split(a.env_state_keys),
        image_keys=split(a.image_keys),
        action_key=a.action_key,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pusht"]:  # Chi et al.'s Push-T zarr with gym-pusht features: cdp_plugin.data.pusht
        from cdp_plugin.data.pusht import convert_main

        return convert_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m cdp_plugin.data.convert", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("format", choices=["robomimic", "zarr", "minari"])
    p.add_argument("source", help="hdf5 file, zarr directory/.zip, or local Minari dataset id")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fps", type=int, default=None)
    p.add_argument("--repo-id", default=None)
    p.add_argument("--filter-key", default=None, help="robomimic: only demos in mask/<key> (e.g. train)")
    p.add_argument("--task", default=None, help="zarr: task string stored with every frame")
    p.add_argument("--state-keys", default=None, help="comma-separated source keys for observation.state")
    p.add_argument(
        "--env-state-keys", default=None, help="comma-separated keys for observation.environment_state"
    )
    p.add_argument("--image-keys", default=None, help="comma-separated uint8 image keys")
    p.add_argument(
        "--action-key", default="action", help="action key (robomimic: 'actions' is read as 'action')"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a dataset this tool wrote (anything else is refused)",
    )
    p.add_argument(
        "--allow-missing-chunks",
        action="store_true",
        help="zarr: read chunks missing from the store as the fill value instead of refusing",
    )
    a = p.parse_args(argv)
    keys = _keys_from_args(a)
    try:
        if a.format == "robomimic":
            summary = convert_robomimic(
                a.source,
                a.out,
                keys=keys,
                filter_key=a.filter_key,
                fps=a.fps,
                repo_id=a.repo_id,
                overwrite=a.overwrite,
            )
        elif a.format == "zarr":
            summary = convert_zarr(
                a.source,
                a.out,
                keys=keys,
                fps=a.fps or 10,
                task=a.task,
                repo_id=a.repo_id,
                overwrite=a.overwrite,
                allow_missing_chunks=a.allow_missing_chunks,
            )
        else:
            summary = convert_minari(
                a.source, a.out, keys=keys, fps=a.fps, repo_id=a.repo_id, overwrite=a.overwrite
            )
    except (DatasetFormatError, OutputPathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary.pop("episode_lengths")
    print(json.dumps({"out": str(a.out), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
