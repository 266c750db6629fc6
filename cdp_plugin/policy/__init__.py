"""LeRobot policy ``cdp`` in LeRobot's layout (configuration_cdp, modeling_cdp, processor_cdp)."""

from cdp_plugin.policy.configuration_cdp import ContractiveDiffusionConfig
from cdp_plugin.policy.modeling_cdp import ContractiveDiffusionPolicy
from cdp_plugin.policy.processor_cdp import make_cdp_pre_post_processors

__all__ = ["ContractiveDiffusionConfig", "ContractiveDiffusionPolicy", "make_cdp_pre_post_processors"]
