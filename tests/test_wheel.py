"""The package as users install it: a built wheel in a fresh virtualenv, used from outside the source tree.

1. ``pip wheel --no-deps --no-build-isolation`` on a copy of the git-tracked files (what a clean clone has).
2. A fresh venv (``python -m venv --without-pip``); the wheel is installed into it, not editable, with this
   venv's pip (``pip --python``). To keep CI time sane, the already-installed dependencies are reused via a
   ``.pth`` line naming this venv's site-packages: a directory added by a ``.pth`` line is not a site dir, so
   its ``.pth`` files -- among them the editable finder of the source checkout -- are not run.
3. From a working directory outside the repository: the wheel's ``cdp_plugin`` / ``lerobot_policy_cdp`` are
   what gets imported, ``policy_configs`` is found through package data (``cdp-configs``), ``cdp-bench
   --help`` runs, ``lerobot-train`` trains ``cdp`` for 2 steps from the packaged config and ``lerobot-eval``
   runs one episode of the checkpoint.

This catches package data left out of the wheel and imports that only work from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import cli_env

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env or _env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{out[-8000:]}"
    return proc.stdout


def _env() -> dict:
    env = cli_env()
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    """(venv python, wheel file)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        a, b = REPO / rel, src / rel
        if not a.exists() and not a.is_symlink():
            continue  # deleted in the working tree
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(a, b, follow_symlinks=False)
    dist = tmp / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        cwd=tmp,
    )
    (wheel,) = dist.glob("lerobot_policy_cdp-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip()
    )
    (site / "_reuse_project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            str(wheel),
        ],
        cwd=tmp,
    )
    return py, wheel


def test_wheel_contents(wheel_venv):
    _, wheel = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    assert "cdp_plugin/policy_configs/lerobot/cdp_state_small_cpu.json" in names
    assert "cdp_plugin/policy_configs/diffusion_policy/train_cdp_unet_lowdim_workspace.yaml" in names
    assert "cdp_plugin/policy/modeling_cdp.py" in names and "cdp_plugin/diffusion_policy/lowdim.py" in names
    # every python package of the source tree is in the wheel
    pkgs = {str(p.parent.relative_to(REPO)) for p in (REPO / "cdp_plugin").rglob("__init__.py")}
    pkgs |= {"lerobot_policy_cdp"}
    assert all(f"{p}/__init__.py" in names for p in pkgs), sorted(
        p for p in pkgs if f"{p}/__init__.py" not in names
    )
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Name: lerobot_policy_cdp" in text and "Provides-Extra: async" in text
    assert "Provides-Extra: diffusion-policy" in text  # PEP 685 spelling; [diffusion_policy] normalises to it
    entry = zipfile.ZipFile(wheel).read(meta.replace("METADATA", "entry_points.txt")).decode()
    for script in ("cdp-bench", "cdp-configs", "cdp-policy-server"):
        assert f"{script} =" in entry


def test_installed_wheel_is_what_runs(wheel_venv, tmp_path, pusht_like_dataset):
    py, _ = wheel_venv
    venv = py.parent.parent
    probe = (
        "import cdp_plugin, lerobot_policy_cdp, importlib.metadata as m; "
        "from cdp_plugin.configs import policy_configs_dir, list_configs; "
        "print(cdp_plugin.__file__); print(lerobot_policy_cdp.__file__); print(policy_configs_dir()); "
        "print(len(list_configs())); from lerobot.policies.factory import get_policy_class; "
        "print(get_policy_class('cdp').__module__)"
    )
    out = _run([str(py), "-c", probe], cwd=tmp_path).splitlines()
    for line in out[:3]:
        assert line.startswith(str(venv)) and not line.startswith(str(REPO)), out
    assert int(out[3]) >= 10 and out[4] == "cdp_plugin.policy.modeling_cdp"

    assert "usage" in _run([str(venv / "bin" / "cdp-bench"), "--help"], cwd=tmp_path).lower()
    cfg_path = Path(
        _run([str(venv / "bin" / "cdp-configs"), "path", "cdp_state_small_cpu"], cwd=tmp_path).strip()
    )
    assert cfg_path.is_file() and str(cfg_path).startswith(str(venv))
    assert json.loads(cfg_path.read_text())["policy"]["type"] == "cdp"

    out_dir = tmp_path / "train"
    log = _run(
        [
            str(py),
            "-m",
            "lerobot.scripts.lerobot_train",
            f"--config_path={cfg_path}",
            "--dataset.repo_id=local/pusht_like",
            f"--dataset.root={pusht_like_dataset}",
            f"--output_dir={out_dir}",
            "--steps=2",
            "--batch_size=8",
            "--save_freq=2",
            "--log_freq=1",
        ],
        cwd=tmp_path,
    )
    ckpt = out_dir / "checkpoints" / "000002" / "pretrained_model"
    assert json.loads((ckpt / "config.json").read_text())["type"] == "cdp"
    assert (ckpt / "model.safetensors").is_file(), log[-3000:]

    ev = tmp_path / "eval"
    _run(
        [
            str(py),
            "-m",
            "lerobot.scripts.lerobot_eval",
            f"--policy.path={ckpt}",
            "--policy.device=cpu",
            "--env.type=pusht",
            "--env.obs_type=environment_state_agent_pos",
            "--env.episode_length=10",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            "--eval.use_async_envs=false",
            f"--output_dir={ev}",
        ],
        cwd=tmp_path,
    )
    info = json.loads((ev / "eval_info.json").read_text())
    assert "pc_success" in json.dumps(info)
    assert os.path.commonpath([str(REPO), str(tmp_path)]) != str(REPO)  # ran outside the source tree
