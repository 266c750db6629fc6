"""Pre/post-processors of the ``cdp`` policy: LeRobot's diffusion processors (normalise in, unnormalise out)."""

from __future__ import annotations

from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

from cdp_plugin.policy.configuration_cdp import ContractiveDiffusionConfig


def make_cdp_pre_post_processors(config: ContractiveDiffusionConfig, dataset_stats=None):
    """Found by LeRobot's factory from the type string ``cdp``; identical to ``diffusion``'s pipelines."""
    return make_diffusion_pre_post_processors(config, dataset_stats)
