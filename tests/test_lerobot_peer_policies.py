# Copyright 2024 The HuggingFace Inc. team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""LeRobot's own policy tests, run as a peer suite with ``cdp`` in place of ``diffusion``.

Vendored from huggingface/lerobot v0.6.1 (commit 7e241bd630a3719a56157a497ce5d08f244784f1),
``tests/policies/test_policies.py``, Apache-2.0 (header above). The test bodies are LeRobot's; the
adaptations, all needed to run offline on CPU in CI, are:

- ``_ALL_POLICIES = ["cdp"]`` (LeRobot's parametrisation, with cdp in place of diffusion; act / tdmpc /
  vqbet and their ACT- or VQBeT-only tests are LeRobot's business and are not copied);
- ``dummy_dataset_metadata`` builds the same features (one 84x84 camera, 6-dof state and action) as a
  features dict instead of LeRobot's test-only metadata factories;
- the ResNet-18 backbone is built, not downloaded (``pretrained_backbone_weights=None``); LeRobot's default
  network size is kept for ``test_policy_defaults`` and ``test_get_policy_and_config_classes``, and a small
  one is used where weights are written to disk or trained (``SMALL``);
- ``test_policy`` runs on a LeRobotDataset written by the test with gym-pusht's keys (96x96 image, agent
  position) instead of downloading ``lerobot/pusht``, against gym-pusht itself;
- ``test_backward_compatibility`` is not copied: it compares with LeRobot's stored outputs of its own
  ``diffusion`` on the downloaded PushT dataset, which cdp (another loss and sampler) does not reproduce.

``test_get_policy_and_config_classes`` is LeRobot's check that ``ContractiveDiffusionPolicy.__init__``'s
``config`` annotation is the config class itself (not a string); ``test_cdp_classes_and_annotations_resolve``
is our own, wider version of it.
"""

import inspect
import typing
from copy import deepcopy

import numpy as np
import pytest
import torch
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE
from lerobot.configs.default import DatasetConfig
from lerobot.configs.train import TrainPipelineConfig
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.datasets import make_dataset
from lerobot.envs.factory import make_env, make_env_config
from lerobot.envs.utils import close_envs, preprocess_observation
from lerobot.policies.factory import (
    get_policy_class,
    make_policy,
    make_policy_config,
    make_pre_post_processors,
)
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE
from lerobot.utils.feature_utils import dataset_to_policy_features
from lerobot.utils.utils import cycle

import lerobot_policy_cdp  # noqa: F401  (registers cdp, as LeRobot's CLIs do through plugin discovery)

DEVICE = "cpu"
_ALL_POLICIES = ["cdp"]
AVAILABLE_POLICIES = _ALL_POLICIES
OFFLINE = {"pretrained_backbone_weights": None}
SMALL = {
    **OFFLINE,
    "down_dims": (32, 64),
    "diffusion_step_embed_dim": 32,
    "horizon": 16,
    "n_action_steps": 8,
    "num_inference_steps": 4,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def dummy_dataset_metadata():
    # Create only one camera input which is squared to fit all current policy constraints
    # e.g. vqbet and tdmpc works with one camera only, and tdmpc requires it to be squared
    camera_features = {
        f"{OBS_IMAGES}.laptop": {
            "dtype": "video",
            "shape": (84, 84, 3),
            "names": ["height", "width", "channels"],
            "info": None,
        },
    }
    motor_features = {
        ACTION: {
            "dtype": "float32",
            "shape": (6,),
            "names": ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"],
        },
        OBS_STATE: {
            "dtype": "float32",
            "shape": (6,),
            "names": ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"],
        },
    }

    class _Meta:  # what these tests read from LeRobotDatasetMetadata
        features = {**camera_features, **motor_features}

    return _Meta()


@pytest.mark.parametrize("policy_name", AVAILABLE_POLICIES)
def test_get_policy_and_config_classes(policy_name: str):
    """Check that the correct policy and config classes are returned."""
    policy_cls = get_policy_class(policy_name)
    policy_cfg = make_policy_config(policy_name)
    assert policy_cls.name == policy_name
    assert issubclass(
        policy_cfg.__class__, inspect.signature(policy_cls.__init__).parameters["config"].annotation
    )


def test_cdp_classes_and_annotations_resolve():
    """Ours: what LeRobot's factory and its test rely on, checked for ``cdp`` without evaluating strings."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    from cdp_plugin.policy import (
        ContractiveDiffusionConfig,
        ContractiveDiffusionPolicy,
        make_cdp_pre_post_processors,
    )

    assert "cdp" in PreTrainedConfig.get_known_choices()
    assert PreTrainedConfig.get_choice_class("cdp") is ContractiveDiffusionConfig
    assert get_policy_class("cdp") is ContractiveDiffusionPolicy
    assert issubclass(ContractiveDiffusionPolicy, DiffusionPolicy)
    assert issubclass(ContractiveDiffusionConfig, DiffusionConfig)
    assert ContractiveDiffusionPolicy.config_class is ContractiveDiffusionConfig
    assert ContractiveDiffusionPolicy.name == "cdp"
    cfg = make_policy_config("cdp")
    assert type(cfg) is ContractiveDiffusionConfig and cfg.type == "cdp"
    # the annotations are classes at runtime (no `from __future__ import annotations` strings) and resolve
    ann = inspect.signature(ContractiveDiffusionPolicy.__init__).parameters["config"].annotation
    assert ann is ContractiveDiffusionConfig, ann
    assert typing.get_type_hints(ContractiveDiffusionPolicy.__init__)["config"] is ContractiveDiffusionConfig
    from cdp_plugin.policy.modeling_cdp import ContractiveDiffusionModel

    assert typing.get_type_hints(ContractiveDiffusionModel.__init__)["config"] is ContractiveDiffusionConfig
    # the factory's conventions: configuration_ -> modeling_ / processor_, make_<type>_pre_post_processors
    cfg_module = ContractiveDiffusionConfig.__module__
    assert cfg_module.replace("configuration_", "modeling_") == ContractiveDiffusionPolicy.__module__
    import importlib

    proc_mod = importlib.import_module(cfg_module.replace("configuration_", "processor_"))
    assert proc_mod.make_cdp_pre_post_processors is make_cdp_pre_post_processors


@pytest.mark.parametrize(
    "ds_repo_id,env_name,env_kwargs,policy_name,policy_kwargs",
    [
        ("local/pusht_peer", "pusht", {}, "cdp", SMALL),
    ],
)
def test_policy(ds_repo_id, env_name, env_kwargs, policy_name, policy_kwargs, pusht_peer_dataset):
    """
    Tests:
        - Making the policy object.
        - Checking that the policy follows the correct protocol and subclasses nn.Module
            and PyTorchModelHubMixin.
        - Updating the policy.
        - Using the policy to select actions at inference time.
        - Test the action can be applied to the policy

    Note: We test various combinations of policy and dataset. The combinations are by no means exhaustive,
          and for now we add tests as we see fit.
    """
    train_cfg = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id=ds_repo_id, root=str(pusht_peer_dataset), episodes=[0]),
        policy=make_policy_config(policy_name, push_to_hub=False, **policy_kwargs),
        env=make_env_config(env_name, **env_kwargs),
    )
    train_cfg.policy.device = DEVICE
    train_cfg.validate()

    # Check that we can make the policy object.
    dataset = make_dataset(train_cfg)
    preprocessor, _ = make_pre_post_processors(train_cfg.policy, None)
    policy = make_policy(train_cfg.policy, ds_meta=dataset.meta)
    assert isinstance(policy, PreTrainedPolicy)

    # Check that we run select_actions and get the appropriate output.
    envs = make_env(train_cfg.env, n_envs=2)

    dataloader = torch.utils.data.DataLoader(
        dataset,
        num_workers=0,
        batch_size=2,
        shuffle=True,
        pin_memory=DEVICE != "cpu",
        drop_last=True,
    )
    dl_iter = cycle(dataloader)

    batch = next(dl_iter)

    for key in batch:
        if isinstance(batch[key], torch.Tensor):
            if batch[key].dtype == torch.uint8:
                batch[key] = batch[key].to(dtype=torch.float32) / 255.0
            batch[key] = batch[key].to(DEVICE, non_blocking=True)

    # Test updating the policy (and test that it does not mutate the batch)
    batch_ = deepcopy(batch)
    policy.forward(batch)
    assert set(batch) == set(batch_), "Batch keys are not the same after a forward pass."
    assert all(
        torch.equal(batch[k], batch_[k]) if isinstance(batch[k], torch.Tensor) else batch[k] == batch_[k]
        for k in batch
    ), "Batch values are not the same after a forward pass."

    # reset the policy and environment
    policy.reset()
    # For testing purposes, we only need a single environment instance.
    # So here we unwrap the first suite_name and first task_id to grab
    # the actual env object (SyncVectorEnv) that exposes `.reset()`.
    suite_name = next(iter(envs))
    task_id = next(iter(envs[suite_name]))
    env = envs[suite_name][task_id]
    observation, _ = env.reset(seed=train_cfg.seed)

    # apply transform to normalize the observations
    observation = preprocess_observation(observation)

    # send observation to device/gpu
    observation = {key: observation[key].to(DEVICE, non_blocking=True) for key in observation}

    # get the next action for the environment (also check that the observation batch is not modified)
    observation_ = deepcopy(observation)
    with torch.inference_mode():
        action = policy.select_action(observation).cpu().numpy()
    assert set(observation) == set(observation_), (
        "Observation batch keys are not the same after a forward pass."
    )
    assert all(torch.equal(observation[k], observation_[k]) for k in observation), (
        "Observation batch values are not the same after a forward pass."
    )

    # Test step through policy
    env.step(action)

    close_envs(envs)


@pytest.mark.parametrize("policy_name", AVAILABLE_POLICIES)
def test_policy_defaults(dummy_dataset_metadata, policy_name: str):
    """Check that the policy can be instantiated with defaults."""
    policy_cls = get_policy_class(policy_name)
    policy_cfg = make_policy_config(policy_name, **OFFLINE)
    features = dataset_to_policy_features(dummy_dataset_metadata.features)
    policy_cfg.output_features = {key: ft for key, ft in features.items() if ft.type is FeatureType.ACTION}
    policy_cfg.input_features = {
        key: ft for key, ft in features.items() if key not in policy_cfg.output_features
    }
    policy_cls(policy_cfg)


@pytest.mark.parametrize("policy_name", AVAILABLE_POLICIES)
def test_save_and_load_pretrained(dummy_dataset_metadata, tmp_path, policy_name: str):
    policy_cls = get_policy_class(policy_name)
    policy_cfg = make_policy_config(policy_name, **SMALL)
    features = dataset_to_policy_features(dummy_dataset_metadata.features)
    policy_cfg.output_features = {key: ft for key, ft in features.items() if ft.type is FeatureType.ACTION}
    policy_cfg.input_features = {
        key: ft for key, ft in features.items() if key not in policy_cfg.output_features
    }
    policy = policy_cls(policy_cfg)
    policy.to(policy_cfg.device)
    save_dir = tmp_path / f"test_save_and_load_pretrained_{policy_cls.__name__}"
    policy.save_pretrained(save_dir)
    loaded_policy = policy_cls.from_pretrained(save_dir, config=policy_cfg)
    torch.testing.assert_close(list(policy.parameters()), list(loaded_policy.parameters()), rtol=0, atol=0)


def test_save_pretrained_with_state_dict(dummy_dataset_metadata, tmp_path):
    """Exercise the FSDP checkpoint path: save_pretrained with a pre-gathered state_dict."""
    policy_cls = get_policy_class("cdp")
    policy_cfg = make_policy_config("cdp", **SMALL)
    features = dataset_to_policy_features(dummy_dataset_metadata.features)
    policy_cfg.output_features = {key: ft for key, ft in features.items() if ft.type is FeatureType.ACTION}
    policy_cfg.input_features = {
        key: ft for key, ft in features.items() if key not in policy_cfg.output_features
    }
    policy = policy_cls(policy_cfg)
    policy.to(policy_cfg.device)

    save_dir = tmp_path / "fsdp_state_dict"
    policy.save_pretrained(save_dir, state_dict=policy.state_dict())

    # A single, unsharded safetensors file (no sharded set + index).
    assert (save_dir / SAFETENSORS_SINGLE_FILE).is_file()
    assert not (save_dir / f"{SAFETENSORS_SINGLE_FILE}.index.json").exists()

    loaded_policy = policy_cls.from_pretrained(save_dir, config=policy_cfg)
    torch.testing.assert_close(list(policy.parameters()), list(loaded_policy.parameters()), rtol=0, atol=0)


@pytest.mark.parametrize("multikey", [True, False])
def test_multikey_construction(multikey: bool):
    """
    Asserts that multiple keys with type State/Action are correctly processed by the policy constructor,
    preventing erroneous creation of the policy object.
    """
    from cdp_plugin.policy import ContractiveDiffusionConfig

    input_features = {
        OBS_STATE: PolicyFeature(
            type=FeatureType.STATE,
            shape=(10,),
        ),
    }
    output_features = {
        ACTION: PolicyFeature(
            type=FeatureType.ACTION,
            shape=(5,),
        ),
    }

    if multikey:
        """Simulates the complete state/action is constructed from more granular multiple
        keys, of the same type as the overall state/action"""
        input_features = {}
        input_features[f"{OBS_STATE}.subset1"] = PolicyFeature(type=FeatureType.STATE, shape=(5,))
        input_features[f"{OBS_STATE}.subset2"] = PolicyFeature(type=FeatureType.STATE, shape=(5,))
        input_features[OBS_STATE] = PolicyFeature(type=FeatureType.STATE, shape=(10,))

        output_features = {}
        output_features["action.first_three_motors"] = PolicyFeature(type=FeatureType.ACTION, shape=(3,))
        output_features["action.last_two_motors"] = PolicyFeature(type=FeatureType.ACTION, shape=(2,))
        output_features[ACTION] = PolicyFeature(
            type=FeatureType.ACTION,
            shape=(5,),
        )

    config = ContractiveDiffusionConfig(input_features=input_features, output_features=output_features)

    state_condition = config.robot_state_feature == input_features[OBS_STATE]
    action_condition = config.action_feature == output_features[ACTION]

    assert state_condition, (
        f"Discrepancy detected. Robot state feature is {config.robot_state_feature} but policy expects {input_features[OBS_STATE]}"  # noqa: E501
    )
    assert action_condition, (
        f"Discrepancy detected. Action feature is {config.action_feature} but policy expects {output_features[ACTION]}"  # noqa: E501
    )


# ---------------------------------------------------------------------------------------------------------
# local data standing in for the downloaded lerobot/pusht (gym-pusht's observation keys and shapes)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pusht_peer_dataset(tmp_path_factory):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("peer") / "pusht_peer"
    features = {
        "observation.image": {
            "dtype": "image",
            "shape": (96, 96, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    ds = LeRobotDataset.create(
        repo_id="local/pusht_peer", fps=10, features=features, root=root, use_videos=False
    )
    rng = np.random.default_rng(0)
    for _ in range(2):
        pos = rng.uniform(100, 400, size=2).astype(np.float32)
        for _ in range(24):
            act = (pos + rng.normal(0, 5, size=2)).astype(np.float32)
            img = np.zeros((96, 96, 3), dtype=np.uint8)
            cx, cy = (pos / 512 * 95).astype(int)
            img[max(cy - 3, 0) : cy + 3, max(cx - 3, 0) : cx + 3] = 255
            ds.add_frame({"observation.image": img, "observation.state": pos, "action": act, "task": "push"})
            pos = act
        ds.save_episode()
    ds.finalize()
    return root
