"""Datasets for the plugin's tasks, all written as LeRobotDataset v3 with LeRobot's own writer.

- :mod:`cdp_plugin.data.generate`: scripted-expert datasets (``python -m cdp_plugin.data.generate pointmaze ...``),
- :mod:`cdp_plugin.data.convert`: robomimic hdf5, diffusion_policy zarr and Minari -> LeRobotDataset,
- :mod:`cdp_plugin.data.subsets`: data-fraction subsets (by episode, or by random training windows),
- :mod:`cdp_plugin.data.writer`: the shared atomic writer (temporary directory renamed on success).
"""
