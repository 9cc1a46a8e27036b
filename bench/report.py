"""What the benchmarks share for printing their results."""
from __future__ import annotations


def table(rows: list[list[str]]) -> str:
    """Aligned columns: the first left-aligned, the others right-aligned; a rule under the header row."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
