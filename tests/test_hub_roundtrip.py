"""Hub round trip: ``lerobot-train ... --policy.repo_id=user/cdp_test`` pushes, ``lerobot-eval
--policy.path=user/cdp_test`` pulls it back and acts.

``tests/hub_endpoint.py`` stands in for huggingface.co: a loopback HTTP server implementing the part of the
Hub API that ``HfApi.create_repo`` / ``upload_folder`` (preupload, NDJSON commit), model-card validation and
``hf_hub_download`` (resolve) use. LeRobot's CLIs and huggingface_hub run unchanged against it through
``HF_ENDPOINT``. This is the only test with ``HF_HUB_OFFLINE=0`` (set for its two subprocesses only), with
``HF_ENDPOINT`` on 127.0.0.1, a throw-away ``HF_HOME`` (cache, token) and telemetry off; the endpoint logs
every request and the test asserts nothing else was asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_POLICY, cli_env
from hub_endpoint import HubEndpoint

VENV_BIN = Path(sys.executable).parent
REPO_ID = "user/cdp_test"


def _run(name: str, *args: str, env: dict, cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run(
        [str(VENV_BIN / name), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{out[-8000:]}"
    return out


def test_push_with_lerobot_train_and_pull_with_lerobot_eval(pusht_like_dataset, tmp_path):
    with HubEndpoint() as hub:
        env = cli_env()
        env.update(
            HF_HUB_OFFLINE="0",
            HF_ENDPOINT=hub.url,
            HF_TOKEN="hf_loopback_test_token",
            HF_HOME=str(tmp_path / "hf_home"),
            HF_HUB_DISABLE_TELEMETRY="1",
            NO_PROXY="127.0.0.1,localhost",
            HF_LEROBOT_HOME=str(tmp_path / "lerobot_home"),
        )
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(var, None)
        small = [f for f in SMALL_POLICY if not f.startswith("--policy.push_to_hub")]
        _run(
            "lerobot-train",
            "--policy.type=cdp",
            *small,
            f"--policy.repo_id={REPO_ID}",
            "--dataset.repo_id=local/pusht_like",
            f"--dataset.root={pusht_like_dataset}",
            f"--output_dir={tmp_path / 'train'}",
            "--steps=2",
            "--batch_size=4",
            "--num_workers=0",
            "--log_freq=1",
            "--save_freq=2",
            "--wandb.enable=false",
            "--policy.num_inference_steps=4",
            env=env,
            cwd=tmp_path,
        )
        assert not hub.unhandled, hub.unhandled
        files = hub.repos[REPO_ID].files
        for name in (
            "config.json",
            "model.safetensors",
            "train_config.json",
            "README.md",
            "policy_preprocessor.json",
            "policy_postprocessor.json",
        ):
            assert name in files, (name, sorted(files))
        assert any(n.startswith("policy_preprocessor_step_") and n.endswith(".safetensors") for n in files)
        assert any(n.startswith("policy_postprocessor_step_") and n.endswith(".safetensors") for n in files)
        cfg = json.loads(files["config.json"])
        assert cfg["type"] == "cdp" and cfg["repo_id"] == REPO_ID
        local = json.loads((tmp_path / "train/checkpoints/last/pretrained_model/config.json").read_text())
        assert all(cfg[k] == local[k] for k in local if k.startswith("contraction_") or k == "sampler")
        assert (
            files["model.safetensors"]
            == (tmp_path / "train/checkpoints/last/pretrained_model/model.safetensors").read_bytes()
        )
        card = files["README.md"].decode()
        assert card.startswith("---\n") and "cdp" in card.split("---\n")[1]  # tags in the YAML metadata
        assert "Contractive Diffusion Policies" in card and "ICLR 2026" in card  # the paper
        for key in ("contraction_weight", "contraction_margin", "contraction_loss", "contraction_estimator"):
            assert f"`{key}` | `{cfg[key]}`" in card, key  # the contraction settings, as trained
        assert (
            hub.validated_cards and hub.validated_cards[-1] == card
        )  # validated at HF_ENDPOINT, not huggingface.co

        n_before = len(hub.requests)
        ev = tmp_path / "eval"
        _run(
            "lerobot-eval",
            f"--policy.path={REPO_ID}",
            "--policy.device=cpu",
            "--env.type=pusht",
            "--env.obs_type=environment_state_agent_pos",
            "--env.episode_length=10",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            "--eval.use_async_envs=false",
            f"--output_dir={ev}",
            env=env,
            cwd=tmp_path,
        )
        pulled = {p for m, p in hub.requests[n_before:] if m == "GET" and "/resolve/" in p}
        for name in (
            "config.json",
            "model.safetensors",
            "policy_preprocessor.json",
            "policy_postprocessor.json",
        ):
            assert f"/{REPO_ID}/resolve/main/{name}" in pulled, (name, sorted(pulled))
        assert not hub.unhandled, hub.unhandled
    info = json.loads((ev / "eval_info.json").read_text())
    assert "pc_success" in json.dumps(info) and "avg_sum_reward" in json.dumps(info)
    snap = list((tmp_path / "hf_home" / "hub").glob("models--user--cdp_test/snapshots/*/model.safetensors"))
    assert snap and snap[0].read_bytes() == files["model.safetensors"]  # what eval ran is what was pushed
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the rest of the suite stays offline


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
