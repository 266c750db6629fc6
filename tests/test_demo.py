"""`make demo` (examples/demo.py) end to end on tiny sizes, including resume after an interruption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def _demo(out: Path, steps: int) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo.py"),
            "--out",
            str(out),
            "--episodes",
            "4",
            "--steps",
            str(steps),
            "--eval-episodes",
            "1",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_demo_trains_evaluates_and_resumes(tmp_path):
    out = tmp_path / "demo"
    text = _demo(out, 3)
    assert "success rate" in text and "checkpoint" in text
    info = json.loads((out / "eval" / "eval_info.json").read_text())
    assert "pc_success" in json.dumps(info)
    # rerun with more steps: the dataset is reused and training resumes from the last checkpoint
    text = _demo(out, 6)
    assert "reusing dataset" in text and "resuming training from step 3" in text
    step = json.loads(
        (out / "train" / "checkpoints" / "last" / "training_state" / "training_step.json").read_text()
    )
    assert step["step"] == 6
