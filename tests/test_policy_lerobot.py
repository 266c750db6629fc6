"""The `cdp` LeRobot policy through LeRobot's own CLIs and APIs (issue 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL_POLICY, VENV_BIN, cli_env, run_cli
from safetensors.torch import load_file

import lerobot_policy_cdp  # noqa: F401  (registers cdp, as LeRobot's plugin discovery does)
from cdp_plugin.bench.metrics import parse_train_log as parse_log
from cdp_plugin.contraction import ContractionConfig

TRAIN_FLAGS = [
    "--policy.type=cdp",
    *SMALL_POLICY,
    "--policy.optimizer_lr=1e-3",
    "--policy.scheduler_warmup_steps=0",
    "--policy.contraction_diag_every=10",
    "--dataset.repo_id=local/pusht_like",
    "--batch_size=16",
    "--num_workers=0",
    "--wandb.enable=false",
    "--seed=1",
]


@pytest.fixture(scope="module")
def trained(pusht_like_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "cdp"
    proc = run_cli(
        "lerobot-train",
        *TRAIN_FLAGS,
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={out}",
        "--steps=60",
        "--log_freq=10",
        "--save_freq=30",
    )
    return out, proc.stdout + proc.stderr


def test_factory_resolves_cdp():
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

    from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy

    assert get_policy_class("cdp") is ContractiveDiffusionPolicy
    cfg = make_policy_config("cdp", device="cpu")
    assert isinstance(cfg, ContractiveDiffusionConfig) and cfg.type == "cdp"
    ccfg = (cfg.contraction_weight, cfg.contraction_adaptive_target, cfg.contraction_adaptive_every)
    assert (cfg.prediction_type, cfg.sampler, ccfg, cfg.contraction_margin) == (
        "sample",
        "dpmsolver++",
        (0.0, 0.6, 10),  # the adaptive gamma: the study's pick (benchmarks/RESULTS.md, "Adaptive weight")
        0.1,
    )
    assert cfg.down_dims == (512, 1024, 2048)  # LeRobot's defaults stay
    pre, post = make_pre_post_processors(cfg)
    assert pre is not None and post is not None


def test_train_logs_contraction_and_loss_decreases(trained):
    out, log = trained
    rows = parse_log(log)
    assert len(rows) >= 5, log[-3000:]
    for key in (
        "diffusion_loss",
        "contraction_loss",
        "contraction_lambda_max",
        "contraction_lambda_min",
        "contraction_probe_rayleigh",
    ):
        assert key in rows[-1], (key, rows[-1])
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    cfg = json.loads((ckpt / "config.json").read_text())
    assert (
        cfg["type"] == "cdp"
        and cfg["contraction_weight"] == ContractionConfig().weight
        and cfg["contraction_estimator"] == "fd_probe"
    )
    written = {p.suffix for p in ckpt.iterdir()}
    assert ".safetensors" in written and not written & {".bin", ".pt", ".pth", ".ckpt"}


def test_resume_continues_step_count_and_optimizer_state(trained, pusht_like_dataset):
    out, _ = trained
    cfg_path = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    assert (
        json.loads((out / "checkpoints" / "last" / "training_state" / "training_step.json").read_text())[
            "step"
        ]
        == 60
    )
    before = load_file(out / "checkpoints" / "000060" / "training_state" / "optimizer_state.safetensors")
    proc = run_cli(
        "lerobot-train",
        f"--config_path={cfg_path}",
        "--resume=true",
        "--steps=70",
        "--save_freq=10",
        "--log_freq=5",
    )
    rows = parse_log(proc.stdout + proc.stderr)
    assert rows and rows[0]["step"] > 60, rows[:2]
    state = json.loads((out / "checkpoints" / "last" / "training_state" / "training_step.json").read_text())
    assert state["step"] == 70
    after = load_file(out / "checkpoints" / "000070" / "training_state" / "optimizer_state.safetensors")
    step_keys = [k for k in after if k.endswith("/step")]
    assert step_keys and all(
        after[k].item() == 70 for k in step_keys
    )  # Adam moments continued, not restarted
    k = next(k for k in before if k.endswith("exp_avg_sq"))
    assert not torch.equal(before[k], after[k])


def test_eval_on_pusht(trained, tmp_path):
    out, _ = trained
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    ev = tmp_path / "eval"
    run_cli(
        "lerobot-eval",
        f"--policy.path={ckpt}",
        "--policy.device=cpu",
        "--env.type=pusht",
        "--env.obs_type=environment_state_agent_pos",
        "--env.episode_length=20",
        "--eval.n_episodes=2",
        "--eval.batch_size=1",
        "--eval.use_async_envs=false",
        f"--output_dir={ev}",
        "--policy.sampler=ddim",
    )
    info = json.loads((ev / "eval_info.json").read_text())
    overall = info.get("overall", info.get("aggregated", info))
    assert "pc_success" in json.dumps(overall)


def test_save_load_bit_identical_actions(trained, tmp_path):
    from cdp_plugin.policy import ContractiveDiffusionPolicy

    out, _ = trained
    policy = ContractiveDiffusionPolicy.from_pretrained(out / "checkpoints" / "last" / "pretrained_model")
    policy.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["type"] == "cdp"
    again = ContractiveDiffusionPolicy.from_pretrained(tmp_path / "saved")
    obs = {"observation.state": torch.rand(1, 2), "observation.environment_state": torch.rand(1, 16)}
    acts = []
    for p in (policy, again):
        p.reset()
        torch.manual_seed(7)
        acts.append(torch.stack([p.select_action(dict(obs)) for _ in range(3)]))
    assert torch.equal(acts[0], acts[1])


def test_rollout_path_uses_lerobots_own_functions(trained):
    """What `lerobot-rollout` does: load policy + processors from the checkpoint, sync engine,
    select_action."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.rollout.context import _load_pretrained_policy
    from lerobot.rollout.inference.sync import SyncInferenceEngine
    from lerobot.utils.feature_utils import build_dataset_frame

    out, _ = trained
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.pretrained_path = ckpt
    policy = _load_pretrained_policy(cfg)
    assert policy.name == "cdp"
    pre, post = make_pre_post_processors(
        policy_cfg=cfg, pretrained_path=ckpt, preprocessor_overrides={"device_processor": {"device": "cpu"}}
    )
    features = {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "observation.environment_state": {
            "dtype": "float32",
            "shape": (16,),
            "names": [f"e{i}" for i in range(16)],
        },
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    engine = SyncInferenceEngine(
        policy, pre, post, features, ["x", "y"], task="push", device="cpu", robot_type="sim"
    )
    engine.reset()
    robot_obs = {"x": 200.0, "y": 250.0, **{f"e{i}": 100.0 + i for i in range(16)}}
    actions = [
        engine.get_action(build_dataset_frame(features, robot_obs, prefix="observation")) for _ in range(10)
    ]
    assert all(a.shape == (2,) and torch.isfinite(a).all() for a in actions)
    # the action queue: one chunk of n_action_steps = 8 actions, then a new chunk
    assert len(policy._queues["action"]) == 8 - (10 - 8)
    # actions come back in the dataset's units (unnormalised), not in [-1, 1]
    assert max(a.abs().max().item() for a in actions) > 1.5


def test_warm_start_from_diffusion_checkpoint(pusht_like_dataset, tmp_path):
    from cdp_plugin.policy.convert import convert_diffusion_checkpoint

    dp_out = tmp_path / "dp"
    common = [
        *SMALL_POLICY,
        "--dataset.repo_id=local/pusht_like",
        f"--dataset.root={pusht_like_dataset}",
        "--batch_size=8",
        "--num_workers=0",
        "--wandb.enable=false",
        "--log_freq=1",
        "--save_freq=2",
    ]
    run_cli("lerobot-train", "--policy.type=diffusion", *common, f"--output_dir={dp_out}", "--steps=2")
    dp_ckpt = dp_out / "checkpoints" / "last" / "pretrained_model"

    # (a) --policy.type=cdp --policy.pretrained_path=<dp> with the DP's prediction type
    proc = run_cli(
        "lerobot-train",
        "--policy.type=cdp",
        *common,
        f"--policy.pretrained_path={dp_ckpt}",
        "--policy.prediction_type=epsilon",
        f"--output_dir={tmp_path / 'warm'}",
        "--steps=2",
    )
    assert "Missing key" not in proc.stdout + proc.stderr
    dp_w = load_file(dp_ckpt / "model.safetensors")
    assert set(
        load_file(tmp_path / "warm" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
    ) == set(dp_w) | {"diffusion.contraction_weight"}  # + the default adaptive gamma

    # (b) documented conversion, then --policy.path like any cdp checkpoint
    conv = convert_diffusion_checkpoint(
        dp_ckpt, tmp_path / "converted", sampler="ddim", num_inference_steps=10
    )
    cfg = json.loads((conv / "config.json").read_text())
    assert cfg["type"] == "cdp" and cfg["prediction_type"] == "epsilon"
    assert cfg["contraction_normalization"] == "per_dim"  # a new cdp config, not a legacy one
    from cdp_plugin.policy import ContractiveDiffusionPolicy

    p = ContractiveDiffusionPolicy.from_pretrained(conv)
    for k, v in p.state_dict().items():
        if k == "diffusion.contraction_weight":  # the default adaptive gamma, absent from a DP checkpoint
            assert v.item() == 0.0
            continue
        assert torch.equal(v, dp_w[k]), k
    run_cli(
        "lerobot-train",
        f"--policy.path={conv}",
        "--policy.push_to_hub=false",
        "--policy.device=cpu",
        "--dataset.repo_id=local/pusht_like",
        f"--dataset.root={pusht_like_dataset}",
        "--batch_size=8",
        "--num_workers=0",
        "--wandb.enable=false",
        f"--output_dir={tmp_path / 'ft'}",
        "--steps=2",
        "--save_freq=2",
    )


def test_image_observations_and_amp(pusht_like_image_dataset, tmp_path):
    """Image + state observations through lerobot-train; AMP (bf16 autocast on CPU) in the loss."""
    out = tmp_path / "img"
    proc = run_cli(
        "lerobot-train",
        "--policy.type=cdp",
        *SMALL_POLICY,
        "--dataset.repo_id=local/pusht_like_img",
        f"--dataset.root={pusht_like_image_dataset}",
        f"--output_dir={out}",
        "--steps=3",
        "--batch_size=4",
        "--num_workers=0",
        "--wandb.enable=false",
        "--log_freq=1",
        "--save_freq=3",
        "--policy.crop_shape=[84,84]",
        "--policy.use_group_norm=true",
        "--policy.spatial_softmax_num_keypoints=8",
        "--policy.use_amp=true",
    )
    rows = parse_log(proc.stdout + proc.stderr)
    assert rows and all(r["loss"] == r["loss"] for r in rows) and "contraction_loss" in rows[-1]
    from cdp_plugin.policy import ContractiveDiffusionPolicy

    policy = ContractiveDiffusionPolicy.from_pretrained(out / "checkpoints" / "last" / "pretrained_model")
    assert "observation.image" in policy.config.image_features
    batch = {
        "observation.state": torch.rand(2, 2, 2) * 2 - 1,
        "observation.image": torch.rand(2, 2, 3, 96, 96),
        "observation.environment_state": torch.rand(2, 2, 16),
        "action": torch.rand(2, 16, 2) * 2 - 1,
        "action_is_pad": torch.zeros(2, 16, dtype=torch.bool),
    }
    policy.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, info = policy.forward(batch)
    assert torch.isfinite(loss) and info["contraction_loss"] >= 0
    loss.backward()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("estimator", ["fd_probe", "hutchinson", "exact", "lanczos"])
def test_every_estimator_and_prediction_type_trains(prediction_type, estimator):
    from lerobot.configs.types import FeatureType, PolicyFeature

    from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy

    torch.manual_seed(0)
    cfg = ContractiveDiffusionConfig(
        device="cpu",
        horizon=8,
        n_action_steps=4,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        prediction_type=prediction_type,
        contraction_estimator=estimator,
        contraction_loss="hinge" if estimator == "lanczos" else "frobenius",
        contraction_lanczos_iters=3,
        contraction_diag_every=1,
        contraction_diag_samples=2,
        push_to_hub=False,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (3,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    policy = ContractiveDiffusionPolicy(cfg).train()
    batch = {
        "observation.state": torch.randn(4, 2, 2),
        "observation.environment_state": torch.randn(4, 2, 3),
        "action": torch.rand(4, 8, 2) * 2 - 1,
        "action_is_pad": torch.zeros(4, 8, dtype=torch.bool),
    }
    loss, info = policy.forward(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert {"diffusion_loss", "contraction_loss", "contraction_lambda_max", "contraction_lambda_min"} <= set(
        info
    )
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in policy.parameters())
    # validation (no grad): no penalty
    policy.eval()
    with torch.no_grad():
        _, info = policy.forward(batch)
    assert info["contraction_loss"] == 0.0
    # ODE sampling gives actions of the right shape
    policy.reset()
    a = policy.select_action(
        {"observation.state": torch.randn(1, 2), "observation.environment_state": torch.randn(1, 3)}
    )
    assert a.shape == (1, 2)


def test_bad_input_errors_before_training(pusht_like_dataset, tmp_path):
    base = ["lerobot-train", *TRAIN_FLAGS, f"--dataset.root={pusht_like_dataset}", "--steps=1"]
    cases = {
        "--policy.contraction_weight=-1": "contraction weight must be finite and >= 0",
        "--policy.contraction_estimator=power": "does not fit contraction loss",
        "--policy.contraction_wieght=0.1": "contraction_wieght",
        "--policy.contraction_estimator=exact": "D <= 256",  # run with horizon 160: D = 320
    }
    for flag, msg in cases.items():
        extra = ["--policy.horizon=160", "--policy.n_action_steps=8"] if "exact" in flag else []
        proc = run_cli(*base, flag, *extra, f"--output_dir={tmp_path / flag.split('=')[0][9:]}", check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and msg in text, (flag, text[-3000:])
        assert "Training:" not in text  # refused before the first step


def test_missing_dataset_keys_are_clear(tmp_path):
    from lerobot.configs.types import FeatureType, PolicyFeature

    from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy

    kw = dict(device="cpu", horizon=8, n_action_steps=4, down_dims=(16, 32), push_to_hub=False)
    with pytest.raises(ValueError, match="needs an 'action' output feature"):
        ContractiveDiffusionPolicy(
            ContractiveDiffusionConfig(
                **kw,
                input_features={
                    "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                    "observation.environment_state": PolicyFeature(FeatureType.ENV, (3,)),
                },
                output_features={},
            )
        )
    with pytest.raises(ValueError, match="needs an 'observation.state' input feature"):
        ContractiveDiffusionPolicy(
            ContractiveDiffusionConfig(
                **kw,
                input_features={"observation.environment_state": PolicyFeature(FeatureType.ENV, (3,))},
                output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
            )
        )
    policy = ContractiveDiffusionPolicy(
        ContractiveDiffusionConfig(
            **kw,
            input_features={
                "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                "observation.environment_state": PolicyFeature(FeatureType.ENV, (3,)),
            },
            output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        )
    )
    with pytest.raises(KeyError, match="missing \\['action'\\]"):
        policy.forward(
            {"observation.state": torch.zeros(2, 2, 2), "observation.environment_state": torch.zeros(2, 2, 3)}
        )
    with pytest.raises(ValueError, match="non-finite"):
        policy.forward(
            {
                "observation.state": torch.full((2, 2, 2), float("nan")),
                "observation.environment_state": torch.zeros(2, 2, 3),
                "action": torch.zeros(2, 8, 2),
                "action_is_pad": torch.zeros(2, 8, dtype=torch.bool),
            }
        )


def test_model_card_names_policy_paper_and_settings(trained):
    from cdp_plugin.policy import ContractiveDiffusionPolicy

    out, _ = trained
    policy = ContractiveDiffusionPolicy.from_pretrained(out / "checkpoints" / "last" / "pretrained_model")
    card = policy.generate_model_card("local/pusht_like", "cdp", None, None)
    text = str(card)
    assert "cdp" in text and "Contractive Diffusion Policies" in text and "ICLR 2026" in text
    assert f"`contraction_weight` | `{ContractionConfig().weight}`" in text and "fd_probe" in text


def ddp_launch(*args: str) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` of two CPU ranks on loopback: a free rendezvous port, gloo on `lo`, one thread
    per rank."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        str(VENV_BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "--main_process_ip=127.0.0.1",
        f"--main_process_port={port}",
        *args,
    ]
    env = {**cli_env(), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return cmd, env


def test_ddp_gradients_match_single_process(tmp_path):
    """accelerate launch, 2 CPU processes: DDP-averaged CDP gradients == the single-process gradient."""
    import subprocess

    for est in ("fd_probe", "hutchinson"):
        out = tmp_path / f"{est}.json"
        cmd, env = ddp_launch(str(Path(__file__).parent / "scripts" / "ddp_grad_check.py"), str(out), est)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        res = json.loads(out.read_text())
        assert res["world"] == 2 and res["contraction_loss"] > 0
        assert res["max_abs_diff"] <= 1e-4 * max(1.0, res["grad_norm"]), res


def test_lerobot_train_under_accelerate_two_processes(pusht_like_dataset, tmp_path):
    import subprocess

    out = tmp_path / "ddp"
    cmd, env = ddp_launch(
        "-m",
        "lerobot.scripts.lerobot_train",
        *TRAIN_FLAGS,
        f"--dataset.root={pusht_like_dataset}",
        f"--output_dir={out}",
        "--steps=6",
        "--log_freq=3",
        "--save_freq=6",
        "--batch_size=4",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Effective batch size: 4 x 2 = 8" in text
    rows = parse_log(text)
    assert rows and "contraction_loss" in rows[-1]
    assert (out / "checkpoints" / "000006" / "pretrained_model" / "model.safetensors").is_file()


# LeRobot code that modeling_cdp copies (DiffusionPolicy.__init__), mirrors (DiffusionModel.compute_loss: the
# denoising target and padding mask) or relies on (forward calls self.diffusion.compute_loss;
# conditional_sample reads self.noise_scheduler). sha256 of inspect.getsource, LeRobot 0.6.1.
PINNED_LEROBOT = {
    "DiffusionPolicy.__init__": "de6c1a8046936f3e",
    "DiffusionPolicy.forward": "e77625caab4f0522",
    "DiffusionModel.conditional_sample": "ee14296449aef9d8",
    "DiffusionModel.compute_loss": "946e185bb8fbb822",
}


def test_lerobot_originals_are_pinned():
    import hashlib
    import inspect

    from lerobot.policies.diffusion import modeling_diffusion as md

    changed = []
    for name, want in PINNED_LEROBOT.items():
        cls, meth = name.split(".")
        got = hashlib.sha256(inspect.getsource(getattr(getattr(md, cls), meth)).encode()).hexdigest()[:16]
        if got != want:
            changed.append(f"{name} ({want} -> {got})")
    assert not changed, (
        "LeRobot changed code that cdp_plugin/policy/modeling_cdp.py copies or relies on: "
        + ", ".join(changed)
        + ". Re-read the new originals, update ContractiveDiffusionPolicy / ContractiveDiffusionModel to "
        "match, "
        "then update PINNED_LEROBOT."
    )
    # the copy builds the same modules as the original (same state_dict keys): see the warm-start test


def test_policy_config_annotation_is_a_real_class():
    import inspect

    from cdp_plugin.policy import ContractiveDiffusionConfig, ContractiveDiffusionPolicy

    assert (
        inspect.signature(ContractiveDiffusionPolicy.__init__).parameters["config"].annotation
        is ContractiveDiffusionConfig
    )


def test_contraction_fields_come_from_the_core_config():
    """One field per ContractionConfig field, same default (the fields added later resolve to the core's
    default for a new config), and the CLI spelling --policy.contraction_<name> parses."""
    import dataclasses

    import draccus

    from cdp_plugin.contraction import ContractionConfig
    from cdp_plugin.policy import ContractiveDiffusionConfig

    cfg = ContractiveDiffusionConfig()
    core = ContractionConfig()
    for f in dataclasses.fields(ContractionConfig):
        assert getattr(cfg, f"contraction_{f.name}") == getattr(core, f.name), f.name
    assert cfg.contraction_config() == core
    parsed = draccus.parse(
        ContractiveDiffusionConfig,
        args=[
            "--contraction_weight=0.3",
            "--contraction_noise_window=[0,0.1]",
            "--contraction_normalization=paper_d2",
        ],
    )
    assert (parsed.contraction_weight, parsed.contraction_noise_window, parsed.contraction_normalization) == (
        0.3,
        (0.0, 0.1),
        "paper_d2",
    )


def test_config_saved_before_normalization_loads_with_legacy_meaning(tmp_path):
    import warnings

    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.configs.types import FeatureType, PolicyFeature

    from cdp_plugin.policy import ContractiveDiffusionConfig

    cfg = ContractiveDiffusionConfig(
        input_features={"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,))},
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        contraction_weight=0.3,
    )
    assert cfg.contraction_normalization == "per_dim"  # a new config from Python: the new meaning
    cfg._save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        again = PreTrainedConfig.from_pretrained(tmp_path)
    assert again == cfg and not [w for w in rec if "saved without" in str(w.message)]
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("contraction_normalization", "contraction_threshold", "contraction_step_window"):
        saved.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        old = PreTrainedConfig.from_pretrained(tmp_path)
    said = [str(w.message) for w in rec if "saved without" in str(w.message)]
    assert len(said) == 1 and "contraction_normalization='paper_d2'" in said[0], said
    assert old.contraction_config().normalization == "paper_d2" and old.contraction_weight == 0.3


def test_unset_estimator_and_weight_are_the_losss_own_and_saved(tmp_path):
    """`--policy.contraction_loss=hinge` alone trains the fused one-sided hinge at its own gamma (fd_ritz, 1),
    frobenius keeps fd_probe with the adaptive gamma (from 0, target 0.6, prepass every 10th step), a gamma set
    alone is fixed, explicit values win, and the saved config says what trained."""
    import draccus
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.configs.types import FeatureType, PolicyFeature

    from cdp_plugin.policy import ContractiveDiffusionConfig

    def parse(*args):
        return draccus.parse(ContractiveDiffusionConfig, args=list(args))

    hinge = parse("--contraction_loss=hinge")
    assert (hinge.contraction_estimator, hinge.contraction_weight) == ("fd_ritz", 1.0)
    frob = parse("--contraction_loss=frobenius")
    assert (frob.contraction_estimator, frob.contraction_weight) == ("fd_probe", 0.0)
    assert (frob.contraction_adaptive_target, frob.contraction_adaptive_every) == (0.6, 10)
    fixed = parse("--contraction_weight=0.1")
    assert (
        fixed.contraction_weight,
        fixed.contraction_adaptive_target,
        fixed.contraction_adaptive_every,
    ) == (
        0.1,
        None,
        1,
    )
    own = parse("--contraction_loss=hinge", "--contraction_estimator=lanczos", "--contraction_weight=3")
    assert (own.contraction_estimator, own.contraction_weight) == ("lanczos", 3.0)
    with pytest.raises(draccus.utils.ParsingError):
        parse("--contraction_loss=frobenius", "--contraction_estimator=fd_ritz")  # named, and does not fit

    cfg = ContractiveDiffusionConfig(
        input_features={"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,))},
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        contraction_loss="hinge",
    )
    cfg._save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["contraction_estimator"], saved["contraction_weight"]) == ("fd_ritz", 1.0)
    assert PreTrainedConfig.from_pretrained(tmp_path).contraction_config() == cfg.contraction_config()
    # the default's adaptive gamma is saved as such, and a config saved with a fixed gamma (every config before
    # the adaptive default) loads fixed
    default = ContractiveDiffusionConfig(
        input_features=cfg.input_features, output_features=cfg.output_features
    )
    (tmp_path / "default").mkdir()
    default._save_pretrained(tmp_path / "default")
    saved = json.loads((tmp_path / "default" / "config.json").read_text())
    assert (saved["contraction_weight"], saved["contraction_adaptive_target"]) == (0.0, 0.6)
    assert PreTrainedConfig.from_pretrained(tmp_path / "default").contraction_config().adaptive
    saved.update(contraction_weight=0.1, contraction_adaptive_target=None)
    del saved["contraction_adaptive_every"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    old = PreTrainedConfig.from_pretrained(tmp_path / "old").contraction_config()
    assert (old.weight, old.adaptive, old.adaptive_every) == (0.1, False, 1)
