"""Write a LeRobotDataset atomically: into a hidden temporary directory that is renamed on success.

A run that fails or is interrupted (exception, Ctrl-C) deletes its temporary directory and leaves nothing at the
output path, so a partly written dataset never looks complete. Only a hard kill can leave a hidden
``.<name>.partial-<pid>`` directory beside the output; the next run for that output removes it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGE, OBS_STATE


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


def _partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial-{os.getpid()}"


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
) -> Iterator:
    """Yield a write-mode ``LeRobotDataset`` (``use_videos=False``) that appears at ``out`` only once complete.

    On leaving the block normally the dataset is finalized, ``provenance`` (if given) is written to
    ``meta/cdp_provenance.json``, and the temporary directory is renamed to ``out``. On an exception the
    temporary directory is deleted and the exception propagates.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = _partial_dir(out)
    ds = LeRobotDataset.create(
        repo_id=repo_id, fps=fps, features=features, root=tmp, robot_type=robot_type, use_videos=False
    )
    try:
        yield ds
        ds.finalize()
        if ds.meta.total_episodes == 0:
            raise ValueError(f"no episodes were written to {out}")
        if provenance is not None:
            (tmp / "meta" / "cdp_provenance.json").write_text(json.dumps(provenance, indent=2, default=str))
    except BaseException:
        try:
            ds.finalize()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
