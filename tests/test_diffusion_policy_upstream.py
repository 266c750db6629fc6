"""The one-line swap in a diffusion_policy project, against upstream's own code, in CI.

Upstream (Chi et al.'s ``diffusion_policy``, MIT, commit 5ba07ac) is not on PyPI; the tests find a copy of
its package at ``<repo>/../shared/upstream/diffusion_policy-5ba07ac`` (or at ``$CDP_DP_UPSTREAM``, a
checkout's root) and skip, printing why, where there is none.

Upstream needs zarr 2 (its ReplayBuffer uses the v2 store API that zarr 3 removed) and robomimic 0.2.0 (its
hybrid image policies), which must not enter this project's dependency set (zarr 3 here). They are
installed once with ``pip install --no-deps --target <repo>/.cache/dp_side`` (gitignored, reused while the
pinned list below is unchanged; ``$CDP_DP_SIDE_DIR`` overrides the place). The first run downloads and
installs them in about 10 s; later runs reuse the directory.

zarr 3 is already imported in this pytest process by other test modules, so the cases
(``tests/dp_upstream_cases.py``) run in a child pytest with ``PYTHONPATH=<side dir>:<upstream>`` -- the
same interpreter and venv, only those packages in front. This test passes only if every case there ran
and passed (the one allowed skip: an upstream file outside the package that the shared copy lacks).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_NAME = "diffusion_policy-5ba07ac"
CASES = REPO / "tests" / "dp_upstream_cases.py"
# what upstream needs that this project's venv does not have (or has in an incompatible major version);
# --no-deps: nothing else is shadowed. robomimic 0.2.0 imports without its optional deps for upstream's use.
SIDE_REQUIREMENTS = (
    "zarr==2.18.7",
    "numcodecs==0.15.1",
    "asciitree==1.0.0",
    "fasteners==0.20",
    "deprecated==3.0.1",
    "wrapt==2.5.2",
    "robomimic==0.2.0",
)
ALLOWED_SKIP = "not in this checkout"  # upstream's top-level example yaml: not part of its package


def upstream_root() -> Path | None:
    """Root holding upstream's ``diffusion_policy/`` package, or None."""
    env = os.environ.get("CDP_DP_UPSTREAM")
    for cand in ([Path(env)] if env else []) + [REPO / ".." / "shared" / "upstream" / UPSTREAM_NAME]:
        if (cand / "diffusion_policy" / "policy" / "diffusion_unet_lowdim_policy.py").is_file():
            return cand.resolve()
    return None


def ensure_side_dir() -> Path:
    """Install :data:`SIDE_REQUIREMENTS` into the side directory once (file lock; atomic rename)."""
    side = Path(os.environ.get("CDP_DP_SIDE_DIR", REPO / ".cache" / "dp_side"))
    stamp = side / ".requirements"
    wanted = "\n".join(SIDE_REQUIREMENTS)
    if stamp.is_file() and stamp.read_text() == wanted:
        return side
    side.parent.mkdir(parents=True, exist_ok=True)
    with open(side.parent / f".{side.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == wanted:
            return side
        tmp = side.parent / f".{side.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(tmp),
            *SIDE_REQUIREMENTS,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise AssertionError(
                f"side install for the upstream diffusion_policy tests failed ({' '.join(cmd)}); "
                f"it needs PyPI once:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        (tmp / ".requirements").write_text(wanted)
        shutil.rmtree(side, ignore_errors=True)
        tmp.rename(side)
    return side


@pytest.fixture(scope="session")
def dp_side_env() -> dict[str, str]:
    root = upstream_root()
    if root is None:
        pytest.skip(
            f"upstream diffusion_policy not found at {REPO / '..' / 'shared' / 'upstream' / UPSTREAM_NAME} "
            "(../shared is absent) and $CDP_DP_UPSTREAM is unset: the upstream swap tests cannot run"
        )
    side = ensure_side_dir()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(
            [str(side), str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        ),
        CDP_DP_SIDE_ENV="1",
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
    )
    return env


def test_diffusion_policy_extra_matches_side_install():
    """The ``[diffusion_policy]`` extra users install admits exactly what the side directory tests with."""
    from packaging.requirements import Requirement

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = {Requirement(r).name: Requirement(r) for r in meta["optional-dependencies"]["diffusion_policy"]}
    core = {Requirement(r).name: Requirement(r) for r in meta["dependencies"]}
    for pin in SIDE_REQUIREMENTS:
        name, version = pin.split("==")
        if name in extra:
            assert extra[name].specifier.contains(version), (pin, str(extra[name]))
        if name in core:  # the extra must not contradict the core dependency set
            assert core[name].specifier.contains(version), (pin, str(core[name]))
    assert {"zarr", "numcodecs", "robomimic"} <= set(extra)


def test_upstream_cases_run_in_side_environment(dp_side_env):
    """Run ``tests/dp_upstream_cases.py`` against upstream + zarr 2 + robomimic 0.2.0; all must run."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(CASES),
        "-p",
        "no:zarr",
        "-p",
        "no:cacheprovider",
        "-v",
        "-ra",
        "--durations=5",
        *os.environ.get("CDP_DP_PYTEST_ARGS", "").split(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dp_side_env, cwd=str(REPO), timeout=1200)
    out = proc.stdout + proc.stderr
    tail = "\n".join(out.splitlines()[-40:])
    print(tail)
    assert proc.returncode == 0, f"upstream diffusion_policy cases failed:\n{out[-12000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 15, tail
    skips = re.findall(r"SKIPPED \[\d+\] [^\n]*", out)
    assert all(ALLOWED_SKIP in s for s in skips), f"upstream cases skipped instead of running: {skips}"
    assert re.search(r"test_side_environment_versions PASSED", out), (
        "the cases did not run on the side packages"
    )
    for case in (
        "test_lowdim_workspace_trains_checkpoints_and_reloads",
        "test_hybrid_workspace_trains_and_predicts",
    ):
        assert re.search(rf"{case} PASSED", out), f"{case} did not run"
