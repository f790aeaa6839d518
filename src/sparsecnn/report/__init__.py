"""Rendering of :mod:`sparsecnn.analysis` results: an interactive, self-contained HTML page
(plotly, JS inlined), the same figures as PNG and SVG (matplotlib) and the data as CSV / JSON.

- :func:`write_report`: write the report folder (atomically).
- :mod:`sparsecnn.report.interactive`, :mod:`sparsecnn.report.static`: one function per figure.
- :data:`FIGURES`: the figures' names and titles, in page order.
"""

from ._common import FIGURES
from .writer import render_html, tables, write_report

__all__ = ["write_report", "render_html", "tables", "FIGURES"]
