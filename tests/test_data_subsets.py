"""Data-fraction subsets: by episode (``--dataset.episodes``) and by random training windows (paper protocol)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from cdp_plugin.data.generate import GenerateConfig, generate
from cdp_plugin.data.subsets import (
    WindowSubsetSampler,
    episode_subset,
    window_anchors,
    window_segments,
    window_subset,
)


def test_episode_subset_is_seeded_and_sized():
    a = episode_subset(200, 0.1, seed=42)
    assert a == episode_subset(200, 0.1, seed=42) and a != episode_subset(200, 0.1, seed=1)
    assert len(a) == 20 and a == sorted(set(a)) and a[0] >= 0 and a[-1] < 200
    assert episode_subset(3, 0.01) and len(episode_subset(3, 1.0)) == 3
    with pytest.raises(ValueError):
        episode_subset(10, 0.0)


def test_window_subset_follows_random_split_protocol():
    lengths = [30, 20, 25]
    anchors = window_anchors(lengths, drop_n_last_frames=7)
    assert len(anchors) == 23 + 13 + 18 and 29 not in anchors and 22 in anchors and 30 in anchors
    chosen = window_subset(lengths, 0.1, seed=42, drop_n_last_frames=7)
    # the paper's code: random_split(windows, ...) with torch.Generator().manual_seed(seed)
    k = round(0.1 * len(anchors))
    ref, _ = torch.utils.data.random_split(
        anchors, [k, len(anchors) - k], generator=torch.Generator().manual_seed(42)
    )
    assert chosen == sorted(anchors[i] for i in ref.indices)
    assert chosen == window_subset(lengths, 0.1, seed=42, drop_n_last_frames=7)
    assert chosen != window_subset(lengths, 0.1, seed=0, drop_n_last_frames=7)

    sampler = WindowSubsetSampler(chosen, seed=0)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == chosen and first != second  # reshuffled each epoch


def test_window_segments_cover_exactly_the_windows():
    lengths = [10, 10]
    # anchor 1 in episode 0 with n_obs_steps=2, horizon=4 reads frames 0..3; anchor 8 reads 7..9 (clipped);
    # anchor 10 (episode 1 start) reads 10..12 (clipped at the episode start)
    segs = window_segments(lengths, [1, 8, 10], n_obs_steps=2, horizon=4)
    assert segs == [(0, 4), (7, 10), (10, 13)]


def test_materialized_window_subset_holds_the_same_frames(tmp_path):
    generate(GenerateConfig("pointmaze", tmp_path / "src", episodes=4, seed=0))
    src = LeRobotDataset("local/src", root=tmp_path / "src")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdp_plugin.data.subsets",
            "windows",
            "--root",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "sub"),
            "--fraction",
            "0.05",
            "--seed",
            "42",
            "--horizon",
            "8",
            "--n-obs-steps",
            "2",
            "--n-action-steps",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    sub = LeRobotDataset("local/sub", root=tmp_path / "sub")
    prov = json.loads((tmp_path / "sub" / "meta" / "cdp_provenance.json").read_text())
    segments = prov["segments"]
    assert sub.meta.total_episodes == summary["segments"] == len(segments)
    assert sub.num_frames == summary["frames"] == sum(e - s for s, e in segments) < src.num_frames
    i = 0
    for ep, (s, e) in enumerate(segments):
        for j in range(s, e):
            a, b = sub[i], src[j]
            assert int(a["episode_index"]) == ep
            for key in ("observation.state", "observation.environment_state", "action"):
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
            i += 1
    lengths = [int(n) for n in src.meta.episodes["length"]]
    anchors = window_subset(lengths, 0.05, 42, drop_n_last_frames=8 - 4 - 2 + 1)
    assert len(anchors) == summary["anchors"]
    covered = np.zeros(src.num_frames, bool)
    for s, e in segments:
        covered[s:e] = True
    assert all(covered[a] for a in anchors)


def test_episode_subset_cli(tmp_path):
    generate(GenerateConfig("pointmaze", tmp_path / "src", episodes=5, seed=0))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdp_plugin.data.subsets",
            "episodes",
            "--root",
            str(tmp_path / "src"),
            "--fraction",
            "0.4",
            "--seed",
            "42",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == episode_subset(5, 0.4, 42)
