"""Sections of a results file (``benchmarks/RESULTS.md``) that programs own: the text between
``<!-- tag -->`` and ``<!-- /tag -->`` is replaced, everything else in the file is kept."""

from __future__ import annotations

from pathlib import Path

MATRIX_TAG = "bench:matrix"  # cdp-bench's DP vs CDP matrix
PENALTY_TAG = "bench:penalty"  # cdp-bench's penalty strength study (issue 13)
TOY_TAG = "bench:toy"  # examples/toy_flows.py


def replace_section(path: Path, tag: str, body: str, header: str = "# Benchmarks: DP vs CDP\n") -> None:
    """Write ``body`` between ``<!-- tag -->`` and ``<!-- /tag -->`` in ``path`` (appended when absent; the file
    is created with ``header`` when missing)."""
    path = Path(path)
    start, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.is_file() else header
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
