"""``python -m cdp_plugin.diffusion_policy.train``: upstream's ``train.py`` with the opt-in compat helper.

Equivalent to running ``python train.py`` in a diffusion_policy checkout (same hydra config directory:
upstream's ``diffusion_policy/config``; same ``eval`` resolver; ``cls(cfg).run()`` of the workspace named
by the config's ``_target_``) after :func:`cdp_plugin.diffusion_policy.compat.patch_diffusers_optimization`.
Using this launcher *is* the opt-in. Example (one override swaps the policy)::

    python -m cdp_plugin.diffusion_policy.train --config-name=train_diffusion_unet_lowdim_workspace \\
        task=pusht_lowdim policy._target_=cdp_plugin.diffusion_policy.ContractiveDiffusionUnetLowdimPolicy

``--config-dir=<cdp>/policy_configs/diffusion_policy --config-name=train_cdp_unet_lowdim_workspace`` uses
the example configs of this repository (task configs still come from upstream).
"""

from __future__ import annotations

import pathlib
import sys


def upstream_config_dir() -> str:
    """Absolute path of upstream's ``diffusion_policy/config`` directory."""
    from cdp_plugin.diffusion_policy._upstream import INSTALL_HINT, UpstreamNotFoundError

    try:
        import diffusion_policy
    except ModuleNotFoundError as e:
        raise UpstreamNotFoundError(INSTALL_HINT) from e
    for p in list(getattr(diffusion_policy, "__path__", [])):
        cfg = pathlib.Path(p) / "config"
        if cfg.is_dir():
            return str(cfg.resolve())
    raise UpstreamNotFoundError(
        f"diffusion_policy has no config/ directory ({list(diffusion_policy.__path__)}). {INSTALL_HINT}"
    )


def main() -> None:
    from cdp_plugin.diffusion_policy.compat import patch_diffusers_optimization

    patch_diffusers_optimization()
    import hydra
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("eval", eval, replace=True)

    @hydra.main(version_base=None, config_path=upstream_config_dir())
    def _run(cfg) -> None:
        OmegaConf.resolve(cfg)
        cls = hydra.utils.get_class(cfg._target_)
        workspace = cls(cfg)
        workspace.run()

    # line-buffered stdout, as upstream's train.py
    sys.stdout.reconfigure(line_buffering=True)
    _run()


if __name__ == "__main__":
    main()
