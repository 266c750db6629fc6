"""`make demo`: expert data -> `lerobot-train --policy.type=cdp` -> `lerobot-eval`, on CPU, in minutes.

1. Writes a small PointMaze expert dataset (LeRobotDataset v3, the plugin's scripted D4RL-style expert).
2. Trains a small Contractive Diffusion Policy on it through LeRobot's own `lerobot-train`.
3. Evaluates the checkpoint in the simulator through `lerobot-eval --env.type=pointmaze`.
4. Prints the success rate and where the checkpoint is.

Interrupt it at any time: a finished dataset is reused, training resumes from its last checkpoint, and a
finished training is not rerun. Options: `python examples/demo.py --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(cmd: list[str], log: Path) -> None:
    """Run a CLI, streaming its progress lines to the terminal and everything to a log file."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    print("$ " + " ".join(cmd), flush=True)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            f.write(line)
            if " step:" in line or "pc_success" in line or line.startswith(("Wrote", "expert", "episodes")):
                print("   " + line.rstrip()[-200:], flush=True)
        if proc.wait() != 0:
            sys.exit(f"command failed ({proc.returncode}); full log: {log}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"))
    ap.add_argument("--episodes", type=int, default=60, help="expert episodes to record")
    ap.add_argument("--steps", type=int, default=1000, help="training steps")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    data = args.out / "data"
    if not (data / "meta" / "info.json").is_file():
        print(f"[1/3] recording {args.episodes} PointMaze expert episodes -> {data}")
        run(
            [
                str(BIN / "python"),
                "-m",
                "cdp_plugin.data.generate",
                "pointmaze",
                "--episodes",
                str(args.episodes),
                "--out",
                str(data),
                "--seed",
                "0",
                "--overwrite",
            ],
            args.out / "generate.log",
        )
    else:
        print(f"[1/3] reusing dataset {data}")

    train = args.out / "train"
    last = train / "checkpoints" / "last"
    done_step = (
        json.loads((last / "training_state" / "training_step.json").read_text())["step"]
        if last.exists()
        else 0
    )
    if done_step >= args.steps:
        print(f"[2/3] training already finished ({done_step} steps)")
    elif done_step > 0:
        print(f"[2/3] resuming training from step {done_step}")
        run(
            [
                str(BIN / "lerobot-train"),
                f"--config_path={last / 'pretrained_model' / 'train_config.json'}",
                "--resume=true",
                f"--steps={args.steps}",
            ],
            args.out / "train_resume.log",
        )
    else:
        print(f"[2/3] training a small CDP for {args.steps} steps on CPU (lerobot-train --policy.type=cdp)")
        shutil.rmtree(train, ignore_errors=True)
        run(
            [
                str(BIN / "lerobot-train"),
                "--policy.type=cdp",
                "--policy.push_to_hub=false",
                "--policy.device=cpu",
                "--policy.pretrained_backbone_weights=null",
                "--policy.horizon=16",
                "--policy.n_action_steps=8",
                "--policy.down_dims=[64,128]",
                "--policy.diffusion_step_embed_dim=64",
                "--policy.optimizer_lr=1e-3",
                "--policy.scheduler_warmup_steps=100",
                "--dataset.repo_id=local/pointmaze_expert",
                f"--dataset.root={data}",
                f"--output_dir={train}",
                f"--steps={args.steps}",
                "--batch_size=32",
                "--num_workers=1",
                f"--log_freq={max(args.steps // 10, 1)}",
                f"--save_freq={max(args.steps // 3, 1)}",
                "--wandb.enable=false",
            ],
            args.out / "train.log",
        )

    ckpt = last / "pretrained_model"
    ev = args.out / "eval"
    shutil.rmtree(ev, ignore_errors=True)
    print(
        f"[3/3] evaluating in the simulator (lerobot-eval --env.type=pointmaze, {args.eval_episodes} episodes)"
    )
    run(
        [
            str(BIN / "lerobot-eval"),
            f"--policy.path={ckpt}",
            "--policy.device=cpu",
            "--env.type=pointmaze",
            f"--eval.n_episodes={args.eval_episodes}",
            "--eval.batch_size=1",
            "--eval.use_async_envs=false",
            f"--output_dir={ev}",
            "--seed=1000",
        ],
        args.out / "eval.log",
    )
    info = json.loads((ev / "eval_info.json").read_text())
    overall = info.get("overall", info.get("aggregated", {}))
    print("\n================ cdp demo ================")
    print(
        f"success rate   : {overall.get('pc_success', float('nan')):.1f} % over {args.eval_episodes} episodes"
    )
    print(f"mean reward    : {overall.get('avg_sum_reward', float('nan')):.2f}")
    print(f"checkpoint     : {ckpt.resolve()}")
    print(f"eval results   : {(ev / 'eval_info.json').resolve()}")
    print(f"total time     : {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
