"""Reliability of the ``cdp`` policy (issue 12): faults and bad inputs get one clear error, nothing
non-finite is saved or served, resume restores the plugin's own state, checkpoints cannot run code.

One test per numbered defect of issue 12 owned here (2, 3, 4, 7, 8, 11) plus a fault-injection test that
SIGKILLs ``lerobot-train`` in the middle of writing a checkpoint. Tiny nets, a few steps
(docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_POLICY, VENV_BIN, cli_env, run_cli
from safetensors.torch import load_file, save_file

import lerobot_policy_cdp  # noqa: F401  (registers cdp, as LeRobot's plugin discovery does)
from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy
from cdp_plugin.policy.guards import NonFiniteError, ObservationError
from cdp_plugin.policy.safe_load import CheckpointMismatchError, UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "scripts" / "lerobot_train_probe.py"
TRAIN = [
    "--policy.type=cdp",
    *SMALL_POLICY,
    "--dataset.repo_id=local/pusht_like",
    "--batch_size=8",
    "--num_workers=0",
    "--wandb.enable=false",
    "--seed=1",
]
OBS = {"observation.state": torch.rand(1, 2), "observation.environment_state": torch.rand(1, 16)}


def tiny_policy(**kw) -> ContractiveDiffusionPolicy:
    from lerobot.configs.types import FeatureType, PolicyFeature

    cfg = ContractiveDiffusionConfig(
        device="cpu",
        horizon=16,
        n_action_steps=8,
        down_dims=(32, 64),
        diffusion_step_embed_dim=32,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (16,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        **kw,
    )
    return ContractiveDiffusionPolicy(cfg).eval()


def nan_first_weight(policy) -> str:
    name, p = next(iter(policy.named_parameters()))
    with torch.no_grad():
        p.view(-1)[0] = float("nan")
    return name


def stderr_of(proc) -> str:
    return proc.stdout + proc.stderr


def has_traceback(log: str) -> bool:
    """A Python traceback in a CLI log, ignoring torchcodec's report of missing FFmpeg libraries."""
    return "Traceback" in re.sub(r"(?s)Traceback.*?\[end of libtorchcodec loading traceback\]", "", log)


# ---------------------------------------------------------------------------------------------- item 2
def test_2_non_finite_loss_stops_training_and_no_nan_checkpoint(pusht_like_dataset, tmp_path):
    """The issue's command line (contraction_loss=none: ``test_2_loss_guard_names_step_and_term``)."""
    out = tmp_path / "run"
    proc = run_cli(
        "lerobot-train",
        *TRAIN,
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={out}",
        "--policy.optimizer_lr=1e6",
        "--policy.contraction_every=1000",
        "--steps=20",
        "--save_freq=1",
        "--log_freq=5",
        check=False,
    )
    log = stderr_of(proc)
    assert proc.returncode == 1, log[-3000:]
    line = next(ln for ln in log.splitlines() if "error: cdp: non-finite" in ln)
    assert "at training step" in line and any(
        t in line for t in ("diffusion_loss", "contraction_penalty", "total")
    )
    assert not has_traceback(log)
    for ckpt in sorted((out / "checkpoints").glob("0*")):  # every checkpoint written holds finite weights
        weights = load_file(ckpt / "pretrained_model" / "model.safetensors")
        assert all(torch.isfinite(v).all() for v in weights.values()), ckpt


def test_2_non_finite_weights_are_never_saved(tmp_path):
    policy = tiny_policy()
    name = nan_first_weight(policy)
    with pytest.raises(NonFiniteError, match=name):
        policy.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_2_loss_guard_names_step_and_term():
    policy = tiny_policy(contraction_loss="none")
    policy.train()
    batch = {
        "observation.state": torch.rand(4, 2, 2),
        "observation.environment_state": torch.rand(4, 2, 16),
        "action": torch.rand(4, 16, 2),
        "action_is_pad": torch.zeros(4, 16, dtype=torch.bool),
    }
    policy.forward(dict(batch))
    nan_first_weight(policy)
    with pytest.raises(NonFiniteError, match=r"non-finite diffusion_loss .* at training step 2"):
        policy.forward(dict(batch))


# ---------------------------------------------------------------------------------------------- item 3
@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("observation.state", torch.tensor([[float("nan"), 0.0]]), "NaN or inf"),
        ("observation.state", torch.tensor([[float("inf"), 0.0]]), "NaN or inf"),
        ("observation.state", torch.full((1, 2), 1e30), "after normalisation"),
        ("observation.state", torch.rand(1, 3), r"shape \(1, 3\)"),
        ("observation.environment_state", None, r"missing \['observation.environment_state'\]"),
    ],
)
def test_3_select_action_refuses_bad_observations(key, value, match):
    policy = tiny_policy()
    obs = dict(OBS)
    if value is None:
        del obs[key]
    else:
        obs[key] = value
    with pytest.raises(ObservationError, match=match):
        policy.select_action(obs)
    policy.reset()
    assert torch.isfinite(policy.select_action(dict(OBS))).all()  # a refused observation leaves no trace


def test_3_float64_is_converted_and_nan_weights_never_act():
    policy = tiny_policy()
    act = policy.select_action({k: v.double() for k, v in OBS.items()})
    assert act.dtype == torch.float32 and torch.isfinite(act).all()
    policy.reset()
    name = nan_first_weight(policy)
    with pytest.raises(NonFiniteError, match=name):
        policy.select_action(dict(OBS))
    with pytest.raises(NonFiniteError):
        policy.predict_action_chunk(dict(OBS))


# ---------------------------------------------------------------------------------------------- item 4
def test_4_loading_refuses_incomplete_or_non_finite_weights(tmp_path):
    policy = tiny_policy()
    policy.save_pretrained(tmp_path / "ok")
    weights = load_file(tmp_path / "ok" / "model.safetensors")
    for case in ("missing", "nan"):
        bad = tmp_path / case
        bad.mkdir()
        (bad / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
        w = dict(weights)
        key = min(k for k in w if k != "diffusion.contraction_weight")  # the adaptive gamma may be absent
        if case == "missing":
            del w[key]
        else:
            w[key] = w[key].clone()
            w[key].view(-1)[0] = float("nan")
        save_file(w, bad / "model.safetensors")
        with pytest.raises(CheckpointMismatchError, match=key if case == "nan" else "lacks 1 of"):
            ContractiveDiffusionPolicy.from_pretrained(bad)
    again = ContractiveDiffusionPolicy.from_pretrained(tmp_path / "ok")
    pairs = zip(policy.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # the default's adaptive gamma is a weight like any other: a non-finite one is refused, by name
    w = dict(weights)
    w["diffusion.contraction_weight"] = torch.tensor(float("nan"))
    (tmp_path / "nan_gamma").mkdir()
    (tmp_path / "nan_gamma" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    save_file(w, tmp_path / "nan_gamma" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="diffusion.contraction_weight"):
        ContractiveDiffusionPolicy.from_pretrained(tmp_path / "nan_gamma")


def test_4_from_pretrained_on_a_diffusion_checkpoint_is_a_warm_start(tmp_path, caplog):
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    src = tiny_policy()
    kw = {
        k: getattr(src.config, k)
        for k in (
            "device",
            "horizon",
            "n_action_steps",
            "down_dims",
            "diffusion_step_embed_dim",
            "input_features",
            "output_features",
        )
    }
    dp = DiffusionPolicy(DiffusionConfig(**kw))
    dp.save_pretrained(tmp_path / "dp")
    assert json.loads((tmp_path / "dp" / "config.json").read_text())["type"] == "diffusion"
    policy = ContractiveDiffusionPolicy.from_pretrained(tmp_path / "dp")
    assert policy.config.type == "cdp" and policy.config.prediction_type == "epsilon"  # the DP's network kind
    assert "warm start" in caplog.text and "cdp_plugin.policy.convert" in caplog.text
    ours = policy.state_dict()
    assert ours.pop("diffusion.contraction_weight").item() == 0.0  # the default adaptive gamma starts at 0
    pairs = zip(dp.state_dict().values(), ours.values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert torch.isfinite(policy.select_action(dict(OBS))).all()


# ---------------------------------------------------------------------------------------------- item 7
@pytest.fixture(scope="module")
def killed_and_resumed(pusht_like_dataset, tmp_path_factory):
    """Train 10 steps (checkpoints every 4), SIGKILL while checkpoint 8 is half written, resume to 12."""
    tmp = tmp_path_factory.mktemp("kill")
    out, probe = tmp / "run", tmp / "probe.jsonl"
    env = cli_env() | {"CDP_PROBE_FILE": str(probe), "CDP_PROBE_HANG_AT": "8"}
    args = [
        *TRAIN,
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={out}",
        "--policy.contraction_every=3",
        "--policy.contraction_diag_every=0",
        "--steps=10",
        "--save_freq=4",
        "--log_freq=1",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(PROBE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while not Path(f"{probe}.hang").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = [json.loads(ln) for ln in probe.read_text().splitlines()]
    cfg = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    env["CDP_PROBE_HANG_AT"] = "-1"
    resumed = subprocess.run(
        [sys.executable, str(PROBE), f"--config_path={cfg}", "--resume=true", "--steps=12", "--log_freq=1"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, stderr_of(resumed)[-4000:]
    after = [json.loads(ln) for ln in probe.read_text().splitlines()][len(before) :]
    return out, before, after, stderr_of(resumed)


def test_7_resume_restores_train_step_and_warns_about_lr_schedule(killed_and_resumed):
    _, _, after, log = killed_and_resumed
    assert "cdp: resumed the contraction schedule at step 4" in log
    assert "resuming with --steps=12 but the checkpoint was trained with --steps=10" in log
    assert [r["train_step"] for r in after] == [r["step"] for r in after] == [8, 12]


def test_7_missing_or_empty_dataset_says_so(tmp_path):
    from cdp_plugin.policy.guards import dataset_problem

    assert "does not exist" in dataset_problem(tmp_path / "absent", "local/x")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"total_episodes": 0, "total_frames": 0}))
    assert "is empty (0 episodes)" in dataset_problem(tmp_path, "local/x")
    root = tmp_path / "empty"
    root.mkdir()
    proc = run_cli(
        "lerobot-train",
        *TRAIN,
        f"--dataset.root={root}",
        f"--output_dir={tmp_path / 'o'}",
        "--steps=2",
        check=False,
    )
    log = stderr_of(proc)
    assert proc.returncode == 1 and "OfflineModeIsEnabled" not in log and not has_traceback(log), log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: cdp:") and f"--dataset.root={root}" in last and "no meta/info.json" in last


def test_7_ctrl_c_says_how_to_resume(pusht_like_dataset, tmp_path):
    out = tmp_path / "run"
    cmd = [
        str(VENV_BIN / "lerobot-train"),
        *TRAIN,
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={out}",
        "--steps=100000",
        "--save_freq=2",
        "--log_freq=1",
    ]
    # PYTHONFAULTHANDLER: should the run not exit, SIGABRT makes it print every thread's stack into the failure.
    # SIG_DFL: a suite started as a background job (`make test &`, `nohup`) inherits SIGINT *ignored*, and so
    # would lerobot-train (Python then installs no KeyboardInterrupt handler, and training runs on): give it
    # the disposition of a terminal's Ctrl-C
    env = {**cli_env(), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "last" / "training_state" / "training_step.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=300)  # a loaded CI machine saves its last checkpoint slowly
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            raise AssertionError(
                "no exit 300 s after SIGINT; stacks:\n" + proc.communicate()[1][-8000:]
            ) from None
    finally:  # a failed wait must not leave a 100000-step training running beside the rest of the suite
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert not has_traceback(stderr)
    assert (
        f"--config_path={out / 'checkpoints/last/pretrained_model/train_config.json'} --resume=true" in stderr
    )


# ---------------------------------------------------------------------------------------------- item 8
def test_8_use_amp_on_cpu_is_announced_once_and_effective(pusht_like_dataset, tmp_path):
    from accelerate import Accelerator

    proc = run_cli(
        "lerobot-train",
        *TRAIN,
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={tmp_path / 'amp'}",
        "--policy.use_amp=true",
        "--steps=2",
        "--log_freq=1",
        "--save_freq=100",
    )
    assert stderr_of(proc).count("--policy.use_amp=true on CPU: lerobot-train autocasts to bfloat16") == 1
    # what lerobot-train does with use_amp on CPU (mixed_precision = torch's CPU autocast dtype): the UNet
    # really runs in bfloat16, and the loss differs from fp32 by more than fp32 round-off
    policy = tiny_policy()
    policy.train()
    batch = {
        "observation.state": torch.rand(4, 2, 2),
        "observation.environment_state": torch.rand(4, 2, 16),
        "action": torch.rand(4, 16, 2),
        "action_is_pad": torch.zeros(4, 16, dtype=torch.bool),
        "cdp.noise": torch.randn(4, 16, 2),
        "cdp.timesteps": torch.tensor([5, 30, 60, 90]),
    }
    dtypes = []
    policy.diffusion.unet.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    with accelerator.autocast():
        amp_loss, _ = policy.forward(dict(batch))
    n_amp = len(dtypes)
    fp32_loss, _ = policy.forward(dict(batch))
    assert dtypes[0] == torch.bfloat16 and set(dtypes[n_amp:]) == {torch.float32}, dtypes
    assert abs(amp_loss.item() - fp32_loss.item()) > 1e-6 * abs(fp32_loss.item())


# --------------------------------------------------------------------------------------------- item 11
def tiny_diffusion_policy():
    """LeRobot's own ``diffusion`` policy with the sizes of :func:`tiny_policy`."""
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    src = tiny_policy().config
    keys = ("device", "horizon", "n_action_steps", "down_dims", "diffusion_step_embed_dim")
    kw = {k: getattr(src, k) for k in (*keys, "input_features", "output_features")}
    return DiffusionPolicy(DiffusionConfig(**kw))


def saved_checkpoint(ckpt: Path, kind: str = "cdp"):
    """A tiny ``kind`` policy saved to ``ckpt`` with its pre- and post-processors; returns the policy."""
    from lerobot.policies.factory import make_pre_post_processors

    policy = tiny_policy() if kind == "cdp" else tiny_diffusion_policy()
    policy.save_pretrained(ckpt)
    pre, post = make_pre_post_processors(policy.config, dataset_stats=None)
    pre.save_pretrained(ckpt)
    post.save_pretrained(ckpt)
    return policy


def hostile_checkpoint(tmp_path, kind: str = "cdp") -> tuple[Path, Path]:
    """A saved ``kind`` checkpoint whose preprocessor JSON asks LeRobot to run ``touch MARKER`` via Popen."""
    ckpt, marker = tmp_path / f"ckpt_{kind}", tmp_path / "pwned"
    saved_checkpoint(ckpt, kind)
    path = ckpt / "policy_preprocessor.json"
    cfg = json.loads(path.read_text())
    cfg["steps"].insert(
        0, {"class": "subprocess.Popen", "config": {"args": f"touch {marker}", "shell": True}}
    )
    path.write_text(json.dumps(cfg))
    return ckpt, marker


def test_11_cdp_loaders_refuse_processor_steps_outside_the_registry(tmp_path):
    from cdp_plugin.bench.probe import ProbeSettings, load_policy
    from cdp_plugin.policy.convert import convert_diffusion_checkpoint
    from cdp_plugin.policy.safe_load import load_pre_post_processors

    for kind in ("cdp", "diffusion"):  # the loaders read DP checkpoints too (warm start, convert, bench)
        ckpt, marker = hostile_checkpoint(tmp_path, kind)
        calls = {
            "load_pre_post_processors": lambda c=ckpt: load_pre_post_processors(tiny_policy().config, c),
            "from_pretrained": lambda c=ckpt: ContractiveDiffusionPolicy.from_pretrained(c),
            "convert": lambda c=ckpt: convert_diffusion_checkpoint(c, tmp_path / "converted"),
            "bench probe": lambda c=ckpt: load_policy(c, ProbeSettings(eval_sampler="ddim")),
        }
        for name, call in calls.items():
            with pytest.raises(
                UnsafeCheckpointError, match=r"step 0 names a Python class \('subprocess.Popen'\)"
            ):
                call()
            assert not marker.exists(), (kind, name)
        assert not (tmp_path / "converted").exists()
    # a registry step with a path in its state file is refused too
    cfg = json.loads((ckpt / "policy_preprocessor.json").read_text())
    cfg["steps"] = [s for s in cfg["steps"] if "registry_name" in s]
    cfg["steps"][-1]["state_file"] = "../../etc/passwd.safetensors"
    (ckpt / "policy_preprocessor.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeCheckpointError, match="bare"):
        load_pre_post_processors(tiny_policy().config, ckpt)


def test_11_franka_evaluation_validates_the_checkpoint_first(tmp_path):
    pytest.importorskip("franky", reason="Franka extra not installed")
    from cdp_plugin.franka.slide import evaluate_policy

    ckpt, marker = hostile_checkpoint(tmp_path)
    with pytest.raises(UnsafeCheckpointError):
        evaluate_policy(ckpt, n_episodes=1, host="127.0.0.1")  # refused before any robot connection
    assert not marker.exists()


# -------------------------------------------------------------------------------------- fault injection
def test_sigkill_mid_checkpoint_resumes_from_last_complete_one(killed_and_resumed):
    out, before, after, log = killed_and_resumed
    assert [r["step"] for r in before] == [4]  # checkpoint 8 was being written when the process died
    assert os.readlink(out / "checkpoints" / "last") == "000012"
    first = next(ln for ln in log.splitlines() if " step:" in ln and "smpl:" in ln)
    assert " step:5 " in first, first  # continued after the last complete checkpoint (4), not after 8
    for r in after:  # optimizer (Adam step count), LeRobot step and the plugin's _train_step agree
        assert r["adam_step"] == [r["step"]] and r["train_step"] == r["step"], r
    state = load_file(out / "checkpoints" / "000012" / "training_state" / "optimizer_state.safetensors")
    assert {v.item() for k, v in state.items() if k.endswith("/step")} == {12}
    eight = out / "checkpoints" / "000008"  # the half-written checkpoint was rewritten completely on resume
    assert json.loads((eight / "training_state" / "training_step.json").read_text())["step"] == 8
    assert (eight / "training_state" / "optimizer_state.safetensors").is_file()


def test_bench_probe_loads_a_gpu_trained_checkpoint_on_a_cpu(tmp_path):
    """A checkpoint written with ``--policy.device=cuda`` names cuda in its preprocessor; the probe (and
    ``benchmarks/gradient_share.py``, which loads through it) runs it on the CPU instead of refusing."""
    import torch
    from lerobot.policies.factory import make_pre_post_processors

    from cdp_plugin.bench.probe import ProbeSettings, load_policy

    ckpt = tmp_path / "ckpt"
    policy = saved_checkpoint(ckpt)
    path = ckpt / "policy_preprocessor.json"
    cfg = json.loads(path.read_text())
    steps = [s for s in cfg["steps"] if s.get("registry_name") == "device_processor"]
    assert steps, cfg["steps"]
    steps[0]["config"]["device"] = "cuda"
    path.write_text(json.dumps(cfg))
    if not torch.cuda.is_available():  # without the override LeRobot refuses this checkpoint here
        with pytest.raises(ValueError, match="CUDA is not available"):
            make_pre_post_processors(policy.config, pretrained_path=str(ckpt))
    _, pre, _ = load_policy(ckpt, ProbeSettings(eval_sampler="ddim"))
    device_steps = [s for s in pre.steps if type(s).__name__ == "DeviceProcessorStep"]
    assert device_steps and device_steps[0].device == "cpu"
