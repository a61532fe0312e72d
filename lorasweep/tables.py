"""Plain-text tables for the console and the logs."""

from __future__ import annotations


def aligned(table: list[list]) -> list[str]:
    """A console table's lines: each column left-aligned to its widest cell, two spaces apart."""
    widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)) for line in table]
