"""Bad input: corrupt/truncated files, missing keys, mismatched lengths, non-finite values.

Every case must raise :class:`DatasetFormatError` whose message names the file, the episode and the key, and
must leave nothing at the output path (a partly written dataset never looks complete).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_data_convert import write_replay_buffer, write_robomimic

from cdp_plugin.data.convert import DatasetFormatError, convert_robomimic, convert_zarr
from cdp_plugin.data.writer import (
    NonFiniteValueError,
    OutputPathError,
    atomic_dataset,
    check_output_path,
    is_cdp_dataset,
    task_features,
)


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
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(noise))
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
        (
            lambda f: (
                f["data/demo_5/obs"].__delitem__("robot0_eef_pos"),
                f["data/demo_5/obs"].create_dataset("robot0_eef_pos", data=np.zeros((3, 3))),
            ),
            ["episode demo_5", "'robot0_eef_pos'", "length 3 does not match 7 actions"],
        ),
        (
            lambda f: f["data/demo_10/obs/object"].__setitem__((4, 2), np.nan),
            ["episode demo_10", "'object'", "non-finite value at frame 4"],
        ),
        (
            lambda f: f["data/demo_0/actions"].__setitem__((11, 0), np.inf),
            ["episode demo_0", "'action'", "non-finite value at frame 11"],
        ),
    ],
    ids=[
        "missing-obs-key",
        "missing-actions",
        "missing-data-group",
        "length-mismatch",
        "nan-obs",
        "inf-action",
    ],
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
    convert_fails(convert_zarr, src, tmp_path / "out", "episode 2", "'action'", "non-finite value at frame 1")

    not_zarr = tmp_path / "empty_dir"
    not_zarr.mkdir()
    convert_fails(convert_zarr, not_zarr, tmp_path / "out", "zarr")


def test_cli_reports_error_and_exit_code(tmp_path):
    src = tmp_path / "demo.hdf5"
    write_robomimic(src)
    _edit_hdf5(src, lambda f: f["data/demo_5/obs"].__delitem__("object"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cdp_plugin.data.convert", "robomimic", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"error: {src}, episode demo_5, key 'object'" in proc.stderr
    assert_nothing_written(out)


def test_interrupted_write_leaves_no_dataset(tmp_path):
    out = tmp_path / "ds"
    feats = task_features(2, 2, 2)
    frame = {
        "observation.state": np.zeros(2, np.float32),
        "observation.environment_state": np.zeros(2, np.float32),
        "action": np.zeros(2, np.float32),
        "next.reward": np.zeros(1, np.float32),
        "next.success": np.zeros(1, bool),
        "next.done": np.zeros(1, bool),
        "task": "t",
    }
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


# -- issue 12 item 5: --overwrite replaces only a dataset this tool wrote, crash-safely ----------------------

FRAME = {
    "observation.state": np.zeros(2, np.float32),
    "observation.environment_state": np.zeros(2, np.float32),
    "action": np.zeros(2, np.float32),
    "next.reward": np.zeros(1, np.float32),
    "next.success": np.zeros(1, bool),
    "next.done": np.zeros(1, bool),
}


def write_tiny(out, episodes: int, overwrite: bool = False, value: float = 0.0):
    """A cdp dataset of ``episodes`` episodes of 2 frames whose actions all equal ``value``."""
    feats = task_features(2, 2, 2)
    with atomic_dataset(out, repo_id="local/x", fps=10, features=feats, overwrite=overwrite) as ds:
        for _ in range(episodes):
            for _ in range(2):
                ds.add_frame({**FRAME, "action": np.full(2, value, np.float32), "task": "t"})
            ds.save_episode()


def episodes_at(out) -> int:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/x", root=out).meta.total_episodes


def run_generate(out, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cdp_plugin.data.generate",
            "pointmaze",
            "--episodes",
            "2",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_generate_overwrite_refuses_what_it_did_not_write(tmp_path, monkeypatch, capsys):
    """The reported case: `generate ... --out DIR --overwrite` deleted a directory of unrelated files."""
    user = tmp_path / "my_dir"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    proc = run_generate(user, "--overwrite")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and str(user) in err[0] and "not a dataset written by cdp" in err[0], proc.stderr
    assert (user / "thesis.tex").read_text() == "precious"

    # an existing file is refused before any work (no task is built), with and without --overwrite
    import cdp_plugin.data.generate as gen

    monkeypatch.setattr(gen, "get_task", lambda name: pytest.fail("work started before --out was checked"))
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        assert gen.main(["pointmaze", "--episodes", "2", "--out", str(f), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "is an existing file" in err and str(f) in err
        assert f.read_text() == "keep me"


def test_overwrite_recognises_only_cdp_datasets(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    plain = tmp_path / "plain"  # a LeRobotDataset, but not written by this tool
    ds = LeRobotDataset.create(
        repo_id="local/x", fps=10, features=task_features(2, 2, 2), root=plain, use_videos=False
    )
    ds.add_frame({**FRAME, "task": "t"})
    ds.save_episode()
    ds.finalize()
    with pytest.raises(OutputPathError, match=f"{plain}.*not a dataset written by cdp"):
        write_tiny(plain, 1, overwrite=True)
    assert (plain / "meta" / "info.json").is_file()

    ours = tmp_path / "ours"
    write_tiny(ours, 1)
    assert is_cdp_dataset(ours)
    (ours / "notes.md").write_text("a user's file inside the dataset")
    with pytest.raises(OutputPathError, match="notes.md"):
        write_tiny(ours, 2, overwrite=True)
    (ours / "notes.md").unlink()
    write_tiny(ours, 2, overwrite=True)
    assert episodes_at(ours) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "plain"]  # no backup, trash or partial left


def _swap_killed_at(staged, out, k: int) -> int:
    """Swap the complete dataset ``staged`` in at ``out`` in a forked child that SIGKILLs itself just before
    its ``k``-th rename/delete; return the child's wait status. (The child only renames and deletes.)"""
    import os
    import shutil
    import signal

    import cdp_plugin.data.writer as w

    pid = os.fork()
    if pid == 0:  # child
        try:
            n = 0

            def guard(fn):
                def wrapped(*a, **kw):
                    nonlocal n
                    n += 1
                    if n == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*a, **kw)

                return wrapped

            w.os.replace, w.shutil.rmtree = guard(os.replace), guard(shutil.rmtree)
            w._swap_in(staged, out)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_overwrite_survives_a_kill_at_every_step(tmp_path):
    """SIGKILL before each rename/delete of the swap: the old or the new dataset is there, never neither."""
    import os
    import signal

    seen = set()
    for k in range(1, 10):
        out, staged = tmp_path / f"k{k}" / "ds", tmp_path / f"k{k}" / ".ds.partial-1"
        write_tiny(out, 1)
        write_tiny(staged, 2)
        status = _swap_killed_at(staged, out, k)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        # the next run for this path puts a stranded old dataset back and clears the leftovers
        check_output_path(out, overwrite=True)
        n = episodes_at(out)  # loads: a complete dataset is at `out`
        assert n in (1, 2) and is_cdp_dataset(out), (k, n)
        left = sorted(p.name for p in out.parent.iterdir() if p.name != staged.name)
        assert left == ["ds"], (k, left)
        seen.add(n)
        if not killed:
            assert n == 2
            break
    else:
        pytest.fail("the swap never finished")
    assert seen == {1, 2}  # both outcomes were reached


# -- issue 12 item 6: non-finite values are reported with episode and frame at generation time -------------


def test_writer_names_episode_and_frame_of_a_non_finite_value(tmp_path):
    out = tmp_path / "ds"
    for bad, key in ((np.nan, "observation.state"), (-np.inf, "action")):
        with pytest.raises(NonFiniteValueError) as err:
            with atomic_dataset(out, repo_id="local/x", fps=10, features=task_features(2, 2, 2)) as ds:
                for ep in range(2):
                    for t in range(3):
                        value = np.array([0.0, bad if (ep, t) == (1, 2) else 0.0], np.float32)
                        ds.add_frame({**FRAME, key: value, "task": "t"})
                    ds.save_episode()
        assert f"episode 1, frame 2, key '{key}'" in str(err.value) and str(out) in str(err.value)
        assert_nothing_written(out)


def test_generate_reports_a_nan_with_its_episode_and_frame(tmp_path, monkeypatch):
    import cdp_plugin.data.generate as gen

    real_rollout = gen.rollout

    def rollout_with_a_nan(*a, **kw):  # a simulator glitch in the first episode, frame 3
        frames, success, sim_time = real_rollout(*a, **kw)
        frames["observation.environment_state"][3, 1] = np.nan
        return frames, success, sim_time

    monkeypatch.setattr(gen, "rollout", rollout_with_a_nan)
    out = tmp_path / "pm"
    with pytest.raises(NonFiniteValueError, match="episode 0, frame 3, key 'observation.environment_state'"):
        gen.generate(gen.GenerateConfig("pointmaze", out, episodes=1, seed=0))
    assert_nothing_written(out)


# -- issue 12 item 6: converters check after the cast and refuse missing zarr chunks ------------------------


def test_float64_beyond_float32_range_is_refused(tmp_path):
    src = tmp_path / "demo.hdf5"
    write_robomimic(src, image=False)
    _edit_hdf5(src, lambda f: f["data/demo_5/actions"].__setitem__((3, 2), 1e40))  # float64: finite
    convert_fails(
        convert_robomimic,
        src,
        tmp_path / "out",
        "episode demo_5",
        "'action'",
        "frame 3",
        "out of float32 range",
    )


def test_zarr_missing_chunk_is_refused_and_named(tmp_path):
    src = tmp_path / "buf.zarr"
    write_replay_buffer(src)
    (src / "data" / "action" / "2.0").unlink()  # rows 10-14 would read as zeros
    convert_fails(convert_zarr, src, tmp_path / "out", "'data/action'", "2.0 (rows 10-14)", "missing")
    proc = subprocess.run(
        [sys.executable, "-m", "cdp_plugin.data.convert", "zarr", str(src), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "--allow-missing-chunks" in proc.stderr
    assert_nothing_written(tmp_path / "out")
