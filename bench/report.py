"""The table every suite prints its figures in: what was measured, its value, and notes."""

from __future__ import annotations

from rich.table import Table


def measure_table(title: str) -> Table:
    table = Table(title=title, header_style="bold", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("notes")
    return table
