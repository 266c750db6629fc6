"""The benchmark report, in small pieces: :mod:`~cdp_plugin.bench.aggregate` (cells -> statistics),
:mod:`~cdp_plugin.bench.markdown` (RESULTS.md sections), :mod:`~cdp_plugin.bench.plots` (one function per figure)
and :mod:`~cdp_plugin.bench.results_file` (the section writer). This module re-exports their public names."""

from __future__ import annotations

from cdp_plugin.bench.aggregate import aggregate, plateau
from cdp_plugin.bench.markdown import (
    compact_table,
    matrix_markdown,
    penalty_markdown,
    pick_default,
    verdict,
)
from cdp_plugin.bench.plots import MATRIX_PLOTS, PENALTY_PLOTS, make_plots
from cdp_plugin.bench.results_file import (
    MATRIX_TAG,
    PENALTY_TAG,
    TOY_TAG,
    replace_section,
)

__all__ = [
    "MATRIX_PLOTS",
    "MATRIX_TAG",
    "PENALTY_PLOTS",
    "PENALTY_TAG",
    "TOY_TAG",
    "aggregate",
    "compact_table",
    "make_plots",
    "matrix_markdown",
    "penalty_markdown",
    "pick_default",
    "plateau",
    "replace_section",
    "verdict",
]
