"""Execute the analysis notebook on a pipeline's outputs, headless (nbclient), and export HTML.

The notebook is a template: its cell tagged ``parameters`` holds defaults; :func:`execute_notebook`
inserts a cell right after it that sets the given parameters (the papermill convention, without
papermill), runs every cell in ``cwd`` and writes the executed notebook and an HTML export without
the code (the .ipynb keeps it). A failing cell raises :class:`kshot.errors.DataError` naming the
cell, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kshot.errors import DataError
from kshot.io import write_text


def inject_parameters(nb: Any, params: Mapping[str, Any]) -> None:
    """Insert ``NAME = repr(value)`` lines as a code cell after the ``parameters``-tagged cell
    (first cell when none is tagged), tagged ``injected-parameters``."""
    import nbformat

    src = "# Parameters injected by kshot.notebook\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    # a fixed cell id (nbformat draws a random one): the same outputs give the same bytes
    cell = nbformat.v4.new_code_cell(
        src, id="injected-parameters", metadata={"tags": ["injected-parameters"]}
    )
    at = next(
        (i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])),
        0,
    )
    nb.cells.insert(at, cell)


def execute_notebook(
    template: Path,
    out_ipynb: Path,
    params: Mapping[str, Any],
    cwd: Path,
    out_html: Path | None = None,
    timeout_s: int = 600,
) -> None:
    """Run ``template`` with ``params`` in ``cwd``; write ``out_ipynb`` (and ``out_html``)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    template = Path(template)
    if not template.is_file():
        raise DataError(f"notebook '{template}': expected an existing .ipynb file, found nothing")
    nb = nbformat.read(template, as_version=4)
    inject_parameters(nb, params)
    # no execution timestamps in the cells' metadata: the same outputs give the same bytes
    client = NotebookClient(
        nb,
        timeout=timeout_s,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:
        raise DataError(f"notebook '{template}': a cell failed on the outputs in '{cwd}':\n{err}") from err
    write_text(out_ipynb, nbformat.writes(nb))
    if out_html is not None:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter(exclude_input=True).from_notebook_node(nb)  # results, not code
        write_text(out_html, body)
