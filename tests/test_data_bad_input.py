"""Bad input: corrupt/truncated files, missing keys, mismatched lengths, non-finite values.

Every case must raise :class:`DatasetFormatError` whose message names the file, the episode and the key, and must
leave nothing at the output path (a partly written dataset never looks complete).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cdp_plugin.data.convert import DatasetFormatError, convert_robomimic, convert_zarr
from cdp_plugin.data.writer import atomic_dataset, task_features

from test_data_convert import write_replay_buffer, write_robomimic


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def convert_fails(convert, src, out, *patterns):
    with pytest.raises(DatasetFormatError) as err:
        convert(src, out)
    msg = str(err.value)
    for p in (str(src), *patterns):
        assert p in msg, f"{p!r} not in error message {msg!r}"
    assert_nothing_written(out)
    return err.value


def test_corrupt_and_truncated_hdf5(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    convert_fails(convert_robomimic, junk, tmp_path / "out", "cannot open as HDF5")

    good = tmp_path / "good.hdf5"
    write_robomimic(good)
    truncated = tmp_path / "truncated.hdf5"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    convert_fails(convert_robomimic, truncated, tmp_path / "out", "HDF5")


def _edit_hdf5(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    "edit,patterns",
    [
        (lambda f: f["data/demo_5/obs"].__delitem__("object"), ["episode demo_5", "'object'", "missing key"]),
        (lambda f: f["data/demo_10"].__delitem__("actions"), ["episode demo_10", "'actions'", "missing key"]),
        (lambda f: f.__delitem__("data"), ["'data'", "missing group"]),
        (lambda f: (f["data/demo_5/obs"].__delitem__("robot0_eef_pos"),
                    f["data/demo_5/obs"].create_dataset("robot0_eef_pos", data=np.zeros((3, 3)))),
         ["episode demo_5", "'robot0_eef_pos'", "length 3 does not match 7 actions"]),
        (lambda f: f["data/demo_10/obs/object"].__setitem__((4, 2), np.nan),
         ["episode demo_10", "'object'", "non-finite value at step 4"]),
        (lambda f: f["data/demo_0/actions"].__setitem__((11, 0), np.inf),
         ["episode demo_0", "'action'", "non-finite value at step 11"]),
    ],
    ids=["missing-obs-key", "missing-actions", "missing-data-group", "length-mismatch", "nan-obs", "inf-action"],
)
def test_robomimic_bad_content(tmp_path, edit, patterns):
    src = tmp_path / "demo.hdf5"
    write_robomimic(src)
    _edit_hdf5(src, edit)
    convert_fails(convert_robomimic, src, tmp_path / "out", *patterns)


def test_zarr_corrupt_chunk_missing_keys_and_mismatch(tmp_path):
    src = tmp_path / "buf.zarr"
    write_replay_buffer(src)
    (src / "data" / "state" / "1.0").write_bytes(b"not a blosc chunk")
    convert_fails(convert_zarr, src, tmp_path / "out", "episode 0", "'data/state'", "cannot read data")

    src = tmp_path / "no_ends.zarr"
    write_replay_buffer(src)
    import shutil

    shutil.rmtree(src / "meta" / "episode_ends")
    convert_fails(convert_zarr, src, tmp_path / "out", "'meta/episode_ends'")

    src = tmp_path / "short.zarr"
    write_replay_buffer(src)
    import zarr

    root = zarr.open_group(str(src), mode="r+")
    root["meta/episode_ends"][:] = [12, 19, 27]  # data has 28 steps
    convert_fails(convert_zarr, src, tmp_path / "out", "ends at 27", "'data/")

    src = tmp_path / "nan.zarr"
    write_replay_buffer(src)
    root = zarr.open_group(str(src), mode="r+")
    root["data/action"][20, 1] = np.nan  # episode 2 starts at 19
    convert_fails(convert_zarr, src, tmp_path / "out", "episode 2", "'action'", "non-finite value at step 1")

    not_zarr = tmp_path / "empty_dir"
    not_zarr.mkdir()
    convert_fails(convert_zarr, not_zarr, tmp_path / "out", "zarr")


def test_cli_reports_error_and_exit_code(tmp_path):
    src = tmp_path / "demo.hdf5"
    write_robomimic(src)
    _edit_hdf5(src, lambda f: f["data/demo_5/obs"].__delitem__("object"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cdp_plugin.data.convert", "robomimic", str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"error: {src}, episode demo_5, key 'object'" in proc.stderr
    assert_nothing_written(out)


def test_interrupted_write_leaves_no_dataset(tmp_path):
    out = tmp_path / "ds"
    feats = task_features(2, 2, 2)
    frame = {"observation.state": np.zeros(2, np.float32), "observation.environment_state": np.zeros(2, np.float32),
             "action": np.zeros(2, np.float32), "next.reward": np.zeros(1, np.float32),
             "next.success": np.zeros(1, bool), "next.done": np.zeros(1, bool), "task": "t"}
    with pytest.raises(KeyboardInterrupt):
        with atomic_dataset(out, repo_id="local/x", fps=10, features=feats) as ds:
            for _ in range(3):
                ds.add_frame(dict(frame))  # add_frame consumes "task"
            ds.save_episode()
            assert not out.exists()  # still hidden while being written
            raise KeyboardInterrupt
    assert_nothing_written(out)

    with pytest.raises(ValueError, match="no episodes"):
        with atomic_dataset(out, repo_id="local/x", fps=10, features=feats):
            pass
    assert_nothing_written(out)

    with atomic_dataset(out, repo_id="local/x", fps=10, features=feats) as ds:
        ds.add_frame(dict(frame))  # add_frame consumes "task"
        ds.save_episode()
    assert (out / "meta" / "info.json").is_file()
    with pytest.raises(FileExistsError):
        with atomic_dataset(out, repo_id="local/x", fps=10, features=feats):
            pass
    assert (out / "meta" / "info.json").is_file()  # the existing dataset is untouched
