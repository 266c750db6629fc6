"""Write a LeRobotDataset atomically, replace only datasets this tool wrote, never write a non-finite value.

API used by every dataset writer of the plugin (:mod:`~cdp_plugin.data.generate`,
:mod:`~cdp_plugin.data.convert`, :mod:`~cdp_plugin.data.pusht`, :mod:`~cdp_plugin.data.subsets`); it stays
stable:

- :func:`check_output_path` ``(out, overwrite) -> Path``: call it before any expensive work; it refuses with
  :class:`OutputPathError` (a ``FileExistsError``, one line naming the path) an ``out`` that is an existing
  file, an existing directory when ``overwrite`` is false, or, with ``overwrite``, a directory that is not
  recognisably a dataset this tool wrote (:func:`is_cdp_dataset`).
- :func:`atomic_dataset` ``(out, *, repo_id, fps, features, robot_type=None, overwrite=False,
  provenance=None)``: a context manager yielding a write-mode dataset with ``add_frame``/``save_episode``/
  ``clear_episode_buffer`` and every other ``LeRobotDataset`` attribute. ``add_frame`` raises
  :class:`NonFiniteValueError` (naming the episode, frame and key) for a value that is NaN or infinite once
  cast to its feature's dtype.

Layout on disk (``out = <parent>/<name>``): the dataset is written to ``<parent>/.<name>.partial-<pid>`` and
swapped in by renames: ``out -> .<name>.cdp-backup``, ``partial -> out``, ``backup ->
.<name>.cdp-trash-<pid>``, then the trash is deleted. A process killed at any instant therefore leaves the old
dataset (at ``out`` or at the backup) or the new one at ``out``, never neither; the next run for ``out``
(:func:`recover_interrupted_swap`) puts a stranded backup back, and removes trash and the partial directories
of processes that no longer run. A run that fails or is interrupted (exception, Ctrl-C) deletes its partial
directory and leaves ``out`` as it was. Every dataset written here carries ``meta/cdp_dataset.json``
(:data:`MARKER`), by which it is recognised.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from glob import escape
from pathlib import Path

import numpy as np
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE

MARKER = "meta/cdp_dataset.json"  # written into every dataset by atomic_dataset
LEGACY_MARKER = "meta/cdp_provenance.json"  # what datasets written before the marker carry
# Top-level entries of a LeRobotDataset v3 directory (images/ only while writing with use_videos=False)
DATASET_ENTRIES = frozenset({"meta", "data", "videos", "images"})


class OutputPathError(FileExistsError):
    """``out`` holds something the writer must not replace; the message names the path and what to do."""


class NonFiniteValueError(ValueError):
    """A frame holds NaN or +-inf (after the cast to its feature's dtype); the message names episode, frame
    and key."""


def vector_feature(dim: int, prefix: str, names: list[str] | None = None) -> dict:
    """A float32 vector feature spec for ``LeRobotDataset.create``."""
    return {"dtype": "float32", "shape": (dim,), "names": names or [f"{prefix}_{i}" for i in range(dim)]}


def image_feature(height: int, width: int) -> dict:
    """A uint8 HWC image feature spec (stored as PNG in parquet, ``use_videos=False``)."""
    return {"dtype": "image", "shape": (height, width, 3), "names": ["height", "width", "channels"]}


def task_features(
    state_dim: int, env_state_dim: int, action_dim: int, image_shape: tuple[int, int] | None = None
) -> dict:
    """Feature specs for the plugin's tasks, with LeRobot's standard keys and pusht's ``next.*`` extras."""
    feats = {
        OBS_STATE: vector_feature(state_dim, "state"),
        OBS_ENV_STATE: vector_feature(env_state_dim, "env_state"),
        ACTION: vector_feature(action_dim, "action"),
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    if image_shape is not None:
        feats[OBS_IMAGE] = image_feature(*image_shape)
    return feats


# -- output path: what may be replaced, and the crash-safe swap ----------------------------------------------


def _partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def _backup_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.cdp-backup"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def not_a_cdp_dataset_reason(path: str | Path) -> str | None:
    """None when ``path`` is a dataset directory this tool wrote, else why not (for the error message).

    Recognised: a directory with LeRobot's ``meta/info.json`` and this writer's :data:`MARKER` (or the
    ``meta/cdp_provenance.json`` every earlier version wrote), holding nothing but LeRobot's own top-level
    entries (``meta``, ``data``, ``videos``, ``images``), so that no file of the user's is deleted with it.
    """
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return "not a directory"
    if not (p / "meta" / "info.json").is_file():
        return "no meta/info.json, so not a LeRobotDataset"
    if not ((p / MARKER).is_file() or (p / LEGACY_MARKER).is_file()):
        return f"a LeRobotDataset without {MARKER}, so not written by cdp"
    extra = sorted(e.name for e in p.iterdir() if e.name not in DATASET_ENTRIES)
    if extra:
        return f"it also holds {extra[:5]}{' ...' if len(extra) > 5 else ''}"
    return None


def is_cdp_dataset(path: str | Path) -> bool:
    """Whether ``path`` is recognisably a dataset written by this tool (:func:`not_a_cdp_dataset_reason`)."""
    return not_a_cdp_dataset_reason(path) is None


def recover_interrupted_swap(out: str | Path) -> None:
    """Finish or undo a swap that a killed process left half done, and remove its leftovers.

    A backup with nothing at ``out`` means the process died between its two renames: the backup (the old,
    complete dataset) goes back to ``out``. A backup beside a dataset at ``out`` means it died after the
    second rename: the new dataset is complete and the backup is deleted (through a trash rename, so a partly
    deleted backup is never mistaken for a complete one). Trash directories and partial directories whose
    process no longer runs are deleted.
    """
    out = Path(out).absolute()
    backup = _backup_dir(out)
    if backup.is_dir() and not os.path.lexists(out):
        os.replace(backup, out)
    elif backup.is_dir() and is_cdp_dataset(out) and is_cdp_dataset(backup):
        os.replace(backup, out.parent / f".{out.name}.cdp-trash-{os.getpid()}")
    pattern = escape(f".{out.name}")
    for trash in out.parent.glob(f"{pattern}.cdp-trash-*"):
        shutil.rmtree(trash, ignore_errors=True)
    for partial in out.parent.glob(f"{pattern}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _pid_alive(int(pid))):  # a live pid's (this run's too) is being written
            shutil.rmtree(partial, ignore_errors=True)


def check_output_path(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an ``out`` that must not be written (see the module docstring); return it as an absolute path.

    Runs :func:`recover_interrupted_swap` first, so a dataset stranded by a killed run is back in place.
    """
    out = Path(out).absolute()
    if out.parent.exists() and not out.parent.is_dir():
        raise OutputPathError(f"--out {out}: its parent {out.parent} is a file; choose another --out")
    if out.parent.is_dir():
        recover_interrupted_swap(out)
    if not os.path.lexists(out):
        return out
    if out.is_symlink() or not out.is_dir():
        raise OutputPathError(
            f"--out {out} is an existing file, not a dataset directory; choose another --out"
        )
    if not overwrite:
        raise OutputPathError(
            f"--out {out} already exists; pass --overwrite to replace it (only a dataset "
            "written by cdp is replaced) or choose another --out"
        )
    reason = not_a_cdp_dataset_reason(out)
    if reason is not None:
        raise OutputPathError(
            f"--out {out} is not a dataset written by cdp ({reason}); refusing to "
            "overwrite it: move it away yourself or choose another --out"
        )
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the complete dataset ``tmp`` at ``out``; an old one stays until the new one is in place."""
    backup = _backup_dir(out)
    if os.path.lexists(out):
        os.replace(out, backup)  # killed after this: recover_interrupted_swap moves the backup back
    try:
        os.replace(tmp, out)
    except BaseException:
        if backup.exists() and not os.path.lexists(out):
            os.replace(backup, out)
        raise
    if backup.exists():
        trash = out.parent / f".{out.name}.cdp-trash-{os.getpid()}"
        os.replace(backup, trash)  # a partly deleted old dataset never sits where recovery would restore it
        shutil.rmtree(trash, ignore_errors=True)


# -- frames: nothing non-finite is written ---------------------------------------------------------------


def check_frame_finite(frame: dict, features: dict, *, where: str, episode: int, frame_index: int) -> None:
    """Raise :class:`NonFiniteValueError` if a float feature of ``frame`` is NaN/inf cast to its dtype.

    The cast matters: a float64 value beyond float32's range (about 3.4e38) is finite before and inf after.
    """
    for key, value in frame.items():
        spec = features.get(key)
        if spec is None or spec["dtype"] not in ("float16", "float32", "float64"):
            continue
        raw = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(raw).astype(spec["dtype"])
        if not np.isfinite(arr).all():
            bad = np.asarray(raw).reshape(-1)[int(np.flatnonzero(~np.isfinite(arr.reshape(-1)))[0])]
            raise NonFiniteValueError(
                f"{where}: episode {episode}, frame {frame_index}, key {key!r}: value {bad!r} is not finite "
                f"as {spec['dtype']}; nothing was written (fix the source of this value)"
            )


class CheckedDataset:
    """The write-mode ``LeRobotDataset`` that :func:`atomic_dataset` yields: every frame is checked finite.

    ``add_frame``, ``save_episode`` and ``clear_episode_buffer`` keep count of the episode and frame for the
    error message; every other attribute is the dataset's own (``dataset`` is the ``LeRobotDataset`` itself).
    """

    def __init__(self, dataset, where: str):
        self.dataset = dataset
        self._where = where
        self._frame_index = 0

    def add_frame(self, frame: dict) -> None:
        check_frame_finite(
            frame,
            self.dataset.features,
            where=self._where,
            episode=self.dataset.meta.total_episodes,
            frame_index=self._frame_index,
        )
        self.dataset.add_frame(frame)
        self._frame_index += 1

    def save_episode(self, *args, **kwargs) -> None:
        self.dataset.save_episode(*args, **kwargs)
        self._frame_index = 0

    def clear_episode_buffer(self, *args, **kwargs) -> None:
        self.dataset.clear_episode_buffer(*args, **kwargs)
        self._frame_index = 0

    def __getattr__(self, name: str):
        return getattr(self.dataset, name)


@contextmanager
def atomic_dataset(
    out: str | Path,
    *,
    repo_id: str,
    fps: int,
    features: dict,
    robot_type: str | None = None,
    overwrite: bool = False,
    provenance: dict | None = None,
) -> Iterator[CheckedDataset]:
    """Yield a write-mode dataset (``use_videos=False``) that appears at ``out`` only once complete.

    ``out`` is checked first (:func:`check_output_path`; callers that do expensive work before entering should
    call it themselves earlier). On leaving the block normally the dataset is finalized, :data:`MARKER` and
    ``provenance`` (if given, as ``meta/cdp_provenance.json``) are written, ``out`` is checked again (it may
    have changed meanwhile) and the new dataset is swapped in. On an exception the partial directory is
    deleted, ``out`` is untouched and the exception propagates.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = check_output_path(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)
    ds = LeRobotDataset.create(
        repo_id=repo_id, fps=fps, features=features, root=tmp, robot_type=robot_type, use_videos=False
    )
    try:
        yield CheckedDataset(ds, str(out))
        ds.finalize()
        if ds.meta.total_episodes == 0:
            raise ValueError(f"no episodes were written to {out}")
        info = json.loads((tmp / "meta" / "info.json").read_text())
        marker = {
            "writer": "cdp_plugin.data.writer",
            "codebase_version": info.get("codebase_version"),
            "repo_id": repo_id,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        if provenance is not None:
            (tmp / LEGACY_MARKER).write_text(json.dumps(provenance, indent=2, default=str))
        check_output_path(out, overwrite)
        _swap_in(tmp, out)
    except BaseException:
        try:
            ds.finalize()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
