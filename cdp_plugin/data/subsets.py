"""Data-fraction subsets for low-data studies: by episode, or by random training windows (the paper's protocol).

By episode (whole demonstrations; LeRobot's own ``--dataset.episodes``)::

    python -m cdp_plugin.data.subsets episodes --root data/lift --fraction 0.1 --seed 42
    # prints e.g. [3, 17, 42, ...]  ->  lerobot-train ... --dataset.episodes='[3, 17, 42, ...]'

By random training windows (Abyaneh et al.: ``random_split`` of all sliding windows with a fixed generator seed,
so "10 %" keeps fragments of every demonstration)::

    python -m cdp_plugin.data.subsets windows --root data/lift --out data/lift_w10 --fraction 0.1 --seed 42 \\
        --horizon 16 --n-obs-steps 2 --n-action-steps 8
    # -> lerobot-train ... --dataset.root=data/lift_w10

A training window in LeRobot is anchored at a frame ``i`` and reads frames ``i - n_obs_steps + 1 .. i + horizon -
n_obs_steps`` (padded at episode edges); frames within ``drop_n_last_frames`` of an episode end are not used as
anchors (as in ``lerobot-train``). :func:`window_subset` picks a random fraction of the anchors exactly as the
paper's code does (``torch.utils.data.random_split`` with ``torch.Generator().manual_seed(seed)``);
:class:`WindowSubsetSampler` samples only those windows in a custom training loop. ``lerobot-train`` has no such
sampler, so ``windows`` *materialises* the subset: every maximal run of frames covered by the chosen windows
becomes one episode of a new dataset. Its frames are exactly the frames of the chosen windows; the windows
``lerobot-train`` then draws from it are those that fit inside the fragments (edge-padded at fragment ends).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cdp_plugin.data.writer import atomic_dataset

_AUTO_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _fraction_count(n: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * n))


def episode_subset(num_episodes: int, fraction: float, seed: int = 42) -> list[int]:
    """A random ``fraction`` of episode indices (sorted), for ``--dataset.episodes``."""
    k = _fraction_count(num_episodes, fraction)
    perm = torch.randperm(num_episodes, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[:k].tolist())


def window_anchors(episode_lengths: list[int], drop_n_last_frames: int = 0) -> list[int]:
    """Global frame indices that can anchor a training window (all but the last ``drop_n_last_frames`` per episode)."""
    anchors, start = [], 0
    for n in episode_lengths:
        anchors.extend(range(start, start + max(n - drop_n_last_frames, 1)))
        start += n
    return anchors


def window_subset(
    episode_lengths: list[int], fraction: float, seed: int = 42, drop_n_last_frames: int = 0
) -> list[int]:
    """The paper's protocol: ``random_split`` of all window anchors with a seeded generator; sorted anchors."""
    anchors = window_anchors(episode_lengths, drop_n_last_frames)
    k = _fraction_count(len(anchors), fraction)
    keep, _ = torch.utils.data.random_split(
        anchors, [k, len(anchors) - k], generator=torch.Generator().manual_seed(seed)
    )
    return sorted(anchors[i] for i in keep.indices)


class WindowSubsetSampler(torch.utils.data.Sampler[int]):
    """Samples only the given window anchors of a LeRobotDataset, reshuffled every epoch (seeded)."""

    def __init__(self, anchors: list[int], shuffle: bool = True, seed: int = 0):
        self.anchors, self.shuffle, self.seed, self.epoch = list(anchors), shuffle, seed, 0

    def __len__(self) -> int:
        return len(self.anchors)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            yield from self.anchors
            return
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        for i in torch.randperm(len(self.anchors), generator=g).tolist():
            yield self.anchors[i]


def window_segments(
    episode_lengths: list[int], anchors: list[int], n_obs_steps: int, horizon: int
) -> list[tuple[int, int]]:
    """Maximal ``[start, end)`` frame ranges covered by the windows of ``anchors``, never crossing an episode."""
    bounds = np.cumsum([0, *episode_lengths])
    covered = np.zeros(bounds[-1], dtype=bool)
    for a in anchors:
        ep = int(np.searchsorted(bounds, a, side="right") - 1)
        lo = max(a - n_obs_steps + 1, bounds[ep])
        hi = min(a - n_obs_steps + 1 + horizon, bounds[ep + 1])
        covered[lo:hi] = True
    segments = []
    for ep in range(len(episode_lengths)):
        s, e = bounds[ep], bounds[ep + 1]
        c = np.concatenate([[False], covered[s:e], [False]])
        edges = np.flatnonzero(np.diff(c.astype(np.int8)))
        segments += [(int(s + a), int(s + b)) for a, b in zip(edges[::2], edges[1::2])]
    return segments


def _to_frame(item: dict, features: dict) -> dict:
    frame = {}
    for key, ft in features.items():
        if key in _AUTO_KEYS:
            continue
        v = item[key]
        if ft["dtype"] in ("image", "video"):
            v = (v.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # CHW float -> HWC uint8
        elif isinstance(v, torch.Tensor):
            v = v.numpy().astype(ft["dtype"]).reshape(ft["shape"])
        frame[key] = v
    frame["task"] = item["task"]
    return frame


def materialize_window_subset(
    root: str | Path,
    out: str | Path,
    fraction: float,
    seed: int = 42,
    *,
    n_obs_steps: int = 2,
    horizon: int = 16,
    n_action_steps: int = 8,
    overwrite: bool = False,
) -> dict:
    """Write the frames of a random window subset of the dataset at ``root`` as a new dataset at ``out``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    src = LeRobotDataset("local/subset_source", root=root)
    lengths = [int(n) for n in src.meta.episodes["length"]]
    drop = max(horizon - n_action_steps - n_obs_steps + 1, 0)
    anchors = window_subset(lengths, fraction, seed, drop_n_last_frames=drop)
    segments = window_segments(lengths, anchors, n_obs_steps, horizon)
    features = {k: v for k, v in src.meta.features.items() if k not in _AUTO_KEYS}
    prov = {
        "subset": "windows",
        "source": str(Path(root).absolute()),
        "fraction": fraction,
        "seed": seed,
        "n_obs_steps": n_obs_steps,
        "horizon": horizon,
        "n_action_steps": n_action_steps,
        "num_anchors": len(anchors),
        "segments": segments,
    }
    with atomic_dataset(
        out,
        repo_id=f"{src.repo_id}_w{fraction}",
        fps=src.fps,
        features=features,
        robot_type=src.meta.robot_type,
        overwrite=overwrite,
        provenance=prov,
    ) as ds:
        for s, e in segments:
            for i in range(s, e):
                ds.add_frame(_to_frame(src[i], src.meta.features))
            ds.save_episode()
    return {
        "anchors": len(anchors),
        "segments": len(segments),
        "frames": int(sum(e - s for s, e in segments)),
        "source_frames": int(sum(lengths)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cdp_plugin.data.subsets", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="mode", required=True)
    pe = sub.add_parser("episodes", help="print a random episode subset for --dataset.episodes")
    pw = sub.add_parser("windows", help="write a dataset holding a random subset of training windows")
    for q in (pe, pw):
        q.add_argument("--root", type=Path, required=True, help="source LeRobotDataset directory")
        q.add_argument("--fraction", type=float, required=True)
        q.add_argument("--seed", type=int, default=42)
    pw.add_argument("--out", type=Path, required=True)
    pw.add_argument("--horizon", type=int, default=16)
    pw.add_argument("--n-obs-steps", type=int, default=2)
    pw.add_argument("--n-action-steps", type=int, default=8)
    pw.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    if a.mode == "episodes":
        from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

        meta = LeRobotDatasetMetadata("local/subset_source", root=a.root)
        print(json.dumps(episode_subset(meta.total_episodes, a.fraction, a.seed)))
    else:
        print(
            json.dumps(
                materialize_window_subset(
                    a.root,
                    a.out,
                    a.fraction,
                    a.seed,
                    n_obs_steps=a.n_obs_steps,
                    horizon=a.horizon,
                    n_action_steps=a.n_action_steps,
                    overwrite=a.overwrite,
                )
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
