"""Import shim for LeRobot's plugin discovery.

LeRobot imports every installed distribution whose name starts with ``lerobot_policy_``; importing this
package registers the ``cdp`` policy (config, model, processors) and the plugin's environments and
robots, and adds ``cdp`` to LeRobot's async gRPC server list (when grpcio is installed; see
:mod:`cdp_plugin.policy_server`). Everything else lives in :mod:`cdp_plugin` (shipped configs:
:mod:`cdp_plugin.configs`).
"""

try:
    import lerobot  # noqa: F401
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "lerobot_policy_cdp needs LeRobot 0.6.x: pip install 'lerobot[diffusion]==0.6.1'"
    ) from e

from cdp_plugin import register as _register

_register.register_all()  # envs and robots first: they stay usable even if the policy import failed

from cdp_plugin.policy import (  # noqa: E402,F401
    ContractiveDiffusionConfig,
    ContractiveDiffusionPolicy,
    make_cdp_pre_post_processors,
)

__all__ = ["ContractiveDiffusionConfig", "ContractiveDiffusionPolicy", "make_cdp_pre_post_processors"]
