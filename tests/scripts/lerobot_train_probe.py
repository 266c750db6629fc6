"""``lerobot-train`` with a probe on checkpointing, for the reliability tests (not used by the library).

Runs LeRobot's own ``lerobot.scripts.lerobot_train.main`` (plugin discovery, parsing, training loop) with
``save_checkpoint`` wrapped to

* append ``{"step", "train_step", "adam_step"}`` to ``$CDP_PROBE_FILE`` (JSON lines) after every complete
  checkpoint -- ``train_step`` is the plugin's ``ContractiveDiffusionModel._train_step``;
* at step ``$CDP_PROBE_HANG_AT``, write the first half of the checkpoint (weights, configs, step file),
  create ``$CDP_PROBE_FILE.hang`` and sleep, so that a test can SIGKILL the process mid-checkpoint.
"""

import json
import os
import sys
import time
from pathlib import Path

import lerobot.scripts.lerobot_train as lt
from lerobot.common.train_utils import save_training_step

probe = Path(os.environ["CDP_PROBE_FILE"])
hang_at = int(os.environ.get("CDP_PROBE_HANG_AT", "-1"))
save_checkpoint = lt.save_checkpoint


def probed_save_checkpoint(checkpoint_dir, step, cfg, policy, optimizer, *args, **kwargs):
    if step == hang_at:
        policy.save_pretrained(checkpoint_dir / "pretrained_model")
        cfg.save_pretrained(checkpoint_dir / "pretrained_model")
        (checkpoint_dir / "training_state").mkdir(parents=True, exist_ok=True)
        save_training_step(step, checkpoint_dir / "training_state")
        Path(f"{probe}.hang").touch()
        time.sleep(600)
    save_checkpoint(checkpoint_dir, step, cfg, policy, optimizer, *args, **kwargs)
    adam = {int(s["step"]) for s in optimizer.state_dict()["state"].values()}
    with probe.open("a") as f:
        f.write(
            json.dumps({"step": step, "train_step": policy.diffusion._train_step, "adam_step": sorted(adam)})
            + "\n"
        )


lt.save_checkpoint = probed_save_checkpoint
sys.exit(lt.main())
