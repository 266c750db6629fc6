"""Converters: robomimic hdf5 / diffusion_policy zarr (v2 format) / Minari -> LeRobotDataset, frame for
frame.

The tests write small source files in each format themselves, convert them with the real converters and read
the result back with LeRobot's own ``LeRobotDataset``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from cdp_plugin.data.convert import KeyMap, convert_minari, convert_robomimic, convert_zarr

LENGTHS = [12, 7, 9]


def write_robomimic(path, lengths=LENGTHS, image=True, seed=0):
    """A robomimic-style file: data/demo_i/{actions,rewards,dones,obs/*}, env_args attribute, mask/train."""
    rng = np.random.default_rng(seed)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = sum(lengths)
        # Written out of numeric order: the converter must sort demo_10 after demo_2.
        for i in reversed(range(len(lengths))):
            n = lengths[i]
            name = f"demo_{i * 5}"
            d = {
                "actions": rng.uniform(-1, 1, (n, 7)),
                "rewards": (np.arange(n) == n - 1).astype(np.float64),
                "dones": (np.arange(n) == n - 1).astype(np.int64),
                "obs/robot0_eef_pos": rng.normal(size=(n, 3)),
                "obs/robot0_eef_quat": rng.normal(size=(n, 4)),
                "obs/robot0_gripper_qpos": rng.normal(size=(n, 2)),
                "obs/object": rng.normal(size=(n, 10)),
                "obs/robot0_joint_pos": rng.normal(size=(n, 7)),
            }
            if image:
                d["obs/agentview_image"] = rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            for k, v in d.items():
                g[k] = v
            demos[name] = d
        f.create_dataset("mask/train", data=np.array([f"demo_{i * 5}".encode() for i in (0, 2)]))
    return [demos[f"demo_{i * 5}"] for i in range(len(lengths))]


def episodes_of(ds: LeRobotDataset) -> list[dict[str, np.ndarray]]:
    """All frames of a dataset, grouped per episode, as numpy arrays (images back to uint8 HWC)."""
    eps = []
    for ep in range(ds.meta.total_episodes):
        lo = int(ds.meta.episodes["dataset_from_index"][ep])
        hi = int(ds.meta.episodes["dataset_to_index"][ep])
        frames = [ds[i] for i in range(lo, hi)]
        assert [int(f["episode_index"]) for f in frames] == [ep] * (hi - lo)
        assert [int(f["frame_index"]) for f in frames] == list(range(hi - lo))
        out = {}
        for k, v in frames[0].items():
            if isinstance(v, torch.Tensor):
                arr = torch.stack([f[k] for f in frames]).numpy()
                if k.startswith("observation.image"):
                    arr = np.round(arr.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
                elif arr.ndim == 1:  # LeRobot returns 1-element features as scalars
                    arr = arr[:, None]
                out[k] = arr
        out["task"] = frames[0]["task"]
        eps.append(out)
    return eps


def check_stats(ds: LeRobotDataset, key: str, all_values: np.ndarray):
    stats = ds.meta.stats[key]
    np.testing.assert_allclose(stats["mean"], all_values.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["std"], all_values.std(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["min"], all_values.min(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["max"], all_values.max(0), rtol=1e-6, atol=1e-6)


def test_robomimic_round_trip_low_dim_and_image(tmp_path):
    src = tmp_path / "lift_ph.hdf5"
    demos = write_robomimic(src)
    summary = convert_robomimic(src, tmp_path / "out")
    assert summary["episode_lengths"] == LENGTHS
    ds = LeRobotDataset("local/lift_ph", root=tmp_path / "out")
    assert ds.fps == 20 and ds.meta.total_episodes == 3 and ds.num_frames == sum(LENGTHS)
    assert ds.meta.features["observation.state"]["shape"] == (9,)
    assert ds.meta.features["observation.environment_state"]["shape"] == (10,)
    assert ds.meta.features["observation.image"]["shape"] == (24, 32, 3)
    for demo, ep in zip(demos, episodes_of(ds), strict=True):
        state = np.concatenate(
            [demo[f"obs/{k}"] for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")], 1
        )
        np.testing.assert_array_equal(ep["action"], demo["actions"].astype(np.float32))
        np.testing.assert_array_equal(ep["observation.state"], state.astype(np.float32))
        np.testing.assert_array_equal(
            ep["observation.environment_state"], demo["obs/object"].astype(np.float32)
        )
        np.testing.assert_array_equal(ep["observation.image"], demo["obs/agentview_image"])
        np.testing.assert_array_equal(ep["next.reward"].reshape(-1), demo["rewards"].astype(np.float32))
        np.testing.assert_array_equal(ep["next.done"].reshape(-1), demo["dones"].astype(bool))
        assert ep["task"] == "Lift"
    check_stats(ds, "action", np.concatenate([d["actions"] for d in demos]).astype(np.float32))
    check_stats(
        ds,
        "observation.environment_state",
        np.concatenate([d["obs/object"] for d in demos]).astype(np.float32),
    )
    prov = json.loads((tmp_path / "out" / "meta" / "cdp_provenance.json").read_text())
    assert prov["converter"] == "robomimic" and prov["env_args"]["env_name"] == "Lift"


def test_robomimic_filter_key_custom_keys_and_cli(tmp_path):
    src = tmp_path / "can.hdf5"
    demos = write_robomimic(src, image=False)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdp_plugin.data.convert",
            "robomimic",
            str(src),
            "--out",
            str(out),
            "--filter-key",
            "train",
            "--state-keys",
            "robot0_joint_pos,robot0_gripper_qpos",
            "--fps",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["episodes"] == 2
    ds = LeRobotDataset("local/can", root=out)
    assert ds.fps == 10 and "observation.environment_state" not in ds.meta.features
    for demo, ep in zip([demos[0], demos[2]], episodes_of(ds), strict=True):
        state = np.concatenate([demo["obs/robot0_joint_pos"], demo["obs/robot0_gripper_qpos"]], 1)
        np.testing.assert_array_equal(ep["observation.state"], state.astype(np.float32))
        np.testing.assert_array_equal(ep["action"], demo["actions"].astype(np.float32))


def write_replay_buffer(path, lengths=LENGTHS, seed=0, zip_store=False, img_dtype=np.uint8):
    """A diffusion_policy ReplayBuffer in zarr v2 format: data/{img,state,keypoint,action},
    meta/episode_ends."""
    import numcodecs
    import zarr

    rng = np.random.default_rng(seed)
    n = sum(lengths)
    arrays = {
        "img": rng.integers(0, 256, (n, 16, 16, 3)).astype(img_dtype),  # Push-T stores float32 0..255
        "state": rng.normal(size=(n, 5)).astype(np.float32),
        "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
    }
    store = zarr.storage.ZipStore(path, mode="w") if zip_store else str(path)
    root = zarr.open_group(store, mode="w", zarr_format=2)
    data, meta = root.require_group("data"), root.require_group("meta")
    for k, v in arrays.items():
        a = data.create_array(
            k,
            shape=v.shape,
            dtype=v.dtype,
            chunks=(5, *v.shape[1:]),
            compressors=numcodecs.Blosc(cname="zstd", clevel=3),
        )
        a[:] = v
    ends = meta.create_array("episode_ends", shape=(len(lengths),), dtype="i8")
    ends[:] = np.cumsum(lengths)
    if zip_store:
        store.close()
    return arrays


@pytest.mark.parametrize("zip_store,img_dtype", [(False, np.uint8), (True, np.float32)])
def test_zarr_replay_buffer_round_trip(tmp_path, zip_store, img_dtype):
    src = tmp_path / ("pusht.zarr.zip" if zip_store else "pusht.zarr")
    arrays = write_replay_buffer(src, zip_store=zip_store, img_dtype=img_dtype)
    assert (src / ".zgroup").is_file() if not zip_store else src.is_file()  # v2 layout
    convert_zarr(src, tmp_path / "out", fps=10, task="push the T")
    ds = LeRobotDataset("local/pusht", root=tmp_path / "out")
    assert ds.meta.total_episodes == 3
    bounds = np.r_[0, np.cumsum(LENGTHS)]
    np.testing.assert_array_equal(ds.meta.episodes["dataset_from_index"], bounds[:-1])
    np.testing.assert_array_equal(ds.meta.episodes["dataset_to_index"], bounds[1:])
    for i, ep in enumerate(episodes_of(ds)):
        s = slice(bounds[i], bounds[i + 1])
        np.testing.assert_array_equal(ep["action"], arrays["action"][s])
        np.testing.assert_array_equal(ep["observation.state"], arrays["state"][s])
        np.testing.assert_array_equal(
            ep["observation.environment_state"], arrays["keypoint"][s].reshape(-1, 18)
        )
        np.testing.assert_array_equal(ep["observation.image"], arrays["img"][s].astype(np.uint8))
        assert ep["task"] == "push the T"
    check_stats(ds, "observation.state", arrays["state"])
    check_stats(ds, "action", arrays["action"])


def test_minari_local_dataset_round_trip(tmp_path, monkeypatch):
    import gymnasium as gym
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    from minari.data_collector import EpisodeBuffer

    # Real Pendulum rollouts, stored through Minari's own writer (DataCollector would need jax).
    env = gym.make("Pendulum-v1", max_episode_steps=15)
    env.action_space.seed(0)
    buffers = []
    for ep in range(3):
        obs, _ = env.reset(seed=ep)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, term, trunc, _ = env.step(action)
            observations.append(obs), actions.append(action), rewards.append(reward)
            terms.append(term), truncs.append(trunc)
            done = term or trunc
        buffers.append(
            EpisodeBuffer(
                id=ep,
                seed=ep,
                observations=np.stack(observations),
                actions=np.stack(actions),
                rewards=rewards,
                terminations=terms,
                truncations=truncs,
                infos={},
            )
        )
    minari.create_dataset_from_buffers(
        "cdp/pendulum-test-v0",
        buffers,
        env=env,
        algorithm_name="random",
        author="cdp tests",
        author_email="tests@example.com",
        code_permalink="https://example.com",
        eval_env="Pendulum-v1",
        description="random Pendulum rollouts written by the cdp tests",
    )
    env.close()
    convert_minari("cdp/pendulum-test-v0", tmp_path / "out")
    src = minari.load_dataset("cdp/pendulum-test-v0")
    ds = LeRobotDataset("local/pendulum", root=tmp_path / "out")
    assert ds.meta.total_episodes == 3 and ds.num_frames == 45
    for minari_ep, ep in zip(src.iterate_episodes(), episodes_of(ds), strict=True):
        np.testing.assert_array_equal(ep["observation.state"], minari_ep.observations[:-1].astype(np.float32))
        np.testing.assert_array_equal(ep["action"], minari_ep.actions.astype(np.float32))
        np.testing.assert_array_equal(ep["next.reward"].reshape(-1), minari_ep.rewards.astype(np.float32))
        assert ep["next.done"].reshape(-1)[-1] and not ep["next.done"].reshape(-1)[:-1].any()

    with pytest.raises(ValueError, match="not a local Minari dataset"):
        convert_minari("D4RL/pointmaze/umaze-v2", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_keymap_image_names():
    one = KeyMap(["s"], image_keys=["agentview_image"])
    assert one.image_feature_name("agentview_image") == "observation.image"
    two = KeyMap(["s"], image_keys=["agentview_image", "robot0_eye_in_hand_image"])
    assert two.image_feature_name("robot0_eye_in_hand_image") == "observation.images.robot0_eye_in_hand"


def test_zarr_chunks_skipped_as_fill_value_convert_only_when_allowed(tmp_path):
    """zarr >= 3 does not store all-fill-value chunks: refused by default, read as the fill value on
    request."""
    src = tmp_path / "buf.zarr"
    arrays = write_replay_buffer(src)
    (src / "data" / "state" / "1.0").unlink()  # rows 5-9
    (src / "data" / "n_contacts" / "0.0").unlink()  # not converted: does not block
    with pytest.raises(ValueError, match=r"'data/state'.*1 chunk\(s\) missing.*1.0 \(rows 5-9\)"):
        convert_zarr(src, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    convert_zarr(src, tmp_path / "out", allow_missing_chunks=True)
    ds = LeRobotDataset("local/buf", root=tmp_path / "out")
    state = np.concatenate([ep["observation.state"] for ep in episodes_of(ds)])
    expected = arrays["state"].copy()
    expected[5:10] = 0.0  # the fill value
    np.testing.assert_array_equal(state, expected)
