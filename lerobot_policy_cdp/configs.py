"""The configs shipped in ``lerobot_policy_cdp/policy_configs``: see :mod:`cdp_plugin.configs`."""

from cdp_plugin.configs import config_path, list_configs, main, policy_configs_dir

__all__ = ["policy_configs_dir", "list_configs", "config_path", "main"]
