"""cdp: Contractive Diffusion Policies for LeRobot and diffusion_policy.

Submodules: :mod:`cdp_plugin.contraction` (estimators and losses, plain torch), :mod:`cdp_plugin.samplers`
(deterministic ODE samplers on diffusers), :mod:`cdp_plugin.policy` (LeRobot ``cdp`` policy),
:mod:`cdp_plugin.diffusion_policy` (adapters for Chi et al.'s diffusion_policy, imported lazily),
:mod:`cdp_plugin.envs` / :mod:`cdp_plugin.data` (tasks and datasets), :mod:`cdp_plugin.franka` (robot).
Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
