"""Rule render_tables: every table of the study on one page, sortable and filterable, for the HTML report.

Rendered with itables (DataTables; pinned in pyproject), in its offline mode: the DataTables bundle is
embedded in the page once, so the page works from ``file://`` and inside Snakemake's report with no
network. itables because it is the well-kept way to turn a pandas frame into a DataTables table
(column sorting, a search box, paging) without writing any JavaScript; Snakemake's own table
rendering (datavzrd) needs a separate Rust tool from conda that users of the demo do not have. Large
tables are shown in part (``MAX_BYTES`` of data each, itables says so on the table); the CSV is complete.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from itables import to_html_datatable
from itables.javascript import generate_init_offline_itables_html
from itables.utils import find_package_file

from esmsae.pipeline.io import atomic_path

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20  # per table; a table beyond it is shown downsampled (the CSV is complete)
LAYOUT = {"topStart": "pageLength", "topEnd": "search", "bottomStart": "info", "bottomEnd": "paging"}


def table_section(name: str, frame: pd.DataFrame) -> str:
    """One table: its name, size, and the DataTables table."""
    body = to_html_datatable(frame, connected=False, maxBytes=MAX_BYTES, display_logo_when_loading=False,
                             classes="display compact", layout=LAYOUT, pageLength=15)
    return (f'<section id="{html.escape(name)}"><h2>{html.escape(name)}.csv</h2>'
            f"<p>{len(frame):,} rows × {len(frame.columns)} columns</p>{body}</section>")


def tables_page(tables: Mapping[str, pd.DataFrame], title: str) -> str:
    """The whole page: an index of the tables, then each one."""
    index = "".join(f'<li><a href="#{html.escape(n)}">{html.escape(n)}</a> ({len(t):,} rows)</li>'
                    for n, t in tables.items())
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:1.5em} section{margin:2em 0} h2{font-size:1.1em}"
            " ul{columns:3}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Click the arrows beside a column name to sort by it, type in a "
            f"table's search box to filter its rows. The files themselves are under <code>tables/</code>.</p>"
            f"<ul>{index}</ul>"
            + generate_init_offline_itables_html(find_package_file("html/dt_bundle.js"))
            + "".join(table_section(n, t) for n, t in tables.items()) + "</body></html>")


def render_tables(tables: Mapping[str, Path], out: str | Path) -> None:
    """Rule render_tables: ``report/tables.html``."""
    frames = {name: pd.read_csv(path) for name, path in sorted(tables.items())}
    page = tables_page(frames, "The study's tables")
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    log.info("%d tables, %d rows in all, on %s (%d bytes)", len(frames), sum(len(f) for f in frames.values()), out,
             len(page))
