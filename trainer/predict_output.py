"""What ``trainer.predict`` writes: tables, one JSON document, or a CSV / JSON-lines file of rows.

A *row* is one image's answer, as :mod:`trainer.predict` makes it: a
prediction ``{"image", "top": [{"rank", "index", "class", "probability"}],
"gradcam"?}`` or an error ``{"image", "error"}``.

``--output FILE.csv`` or ``FILE.jsonl`` (:class:`RowWriter`) writes each
batch's rows as soon as the batch is predicted, and keeps none of them, so
10,000 images need no more memory than 100. A ``gs://`` file is written
locally and uploaded once when the run ends.

CSV columns (:func:`csv_header`), one row per image in input order:
``image``, then ``class_R``, ``index_R``, ``probability_R`` for each rank
``R`` from 1 to ``--top-k`` (empty beyond the number of classes, and on an
error row), ``gradcam`` (the panel's path, only with ``--gradcam``), and
``error`` (empty unless the image could not be read); a text cell a spreadsheet
would run as a formula starts with ``'`` (:func:`contracts.csv_cells.row`). JSON lines: one row
object per line, exactly the entries of ``--json``'s ``predictions`` and
``errors``.
"""

import contextlib
import csv
import os
import tempfile

from contracts import cli, csv_cells, jobdir, storage

# The file formats of --output, by the file's extension (any letter case).
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def output_format(path):
    """Returns ``"csv"`` or ``"jsonl"`` for an ``--output`` path.

    Raises:
        ValueError: For another extension.
    """
    extension = os.path.splitext(str(path).rstrip("/"))[1].lower()
    if extension not in FORMATS:
        raise ValueError(f"--output {path}: must end with {' or '.join(FORMATS)} (the file's format)")
    return FORMATS[extension]


def csv_header(top_k, gradcam=False):
    """The CSV columns: image, class/index/probability for each rank, [gradcam,] error."""
    ranked = [
        f"{column}_{rank}" for rank in range(1, top_k + 1) for column in ("class", "index", "probability")
    ]
    return ["image", *ranked, *(["gradcam"] if gradcam else []), "error"]


def csv_row(row, top_k, gradcam=False):
    """One row as the values of :func:`csv_header`'s columns (``""`` where it has none).

    Text a spreadsheet would run as a formula (a class or file name starting with ``=``,
    ``+``, ``-``, ``@``, tab or carriage return) gets a leading ``'`` (:func:`contracts.csv_cells.row`).
    """
    top = row.get("top", [])
    ranked = []
    for rank in range(top_k):
        if rank < len(top):
            entry = top[rank]
            ranked += [entry["class"], entry["index"], entry["probability"]]
        else:
            ranked += ["", "", ""]
    extra = [row.get("gradcam", "")] if gradcam else []
    return csv_cells.row([row["image"], *ranked, *extra, row.get("error", "")])


class RowWriter:
    """Writes rows to an open CSV or JSON-lines file as they come (:func:`open_rows` makes one).

    Each :meth:`write` call's rows are flushed before it returns, so the file
    is readable (``tail -f``) while the run goes on, and none is kept.

    Attributes:
        images: Rows written.
        errors: Error rows among them.
    """

    def __init__(self, file, file_format, top_k, gradcam=False):
        self._file = file
        self._csv = csv.writer(file) if file_format == "csv" else None
        self.top_k = top_k
        self.gradcam = gradcam
        self.images = 0
        self.errors = 0
        if self._csv:
            self._csv.writerow(csv_header(top_k, gradcam))
            file.flush()

    def write(self, rows):
        """Writes ``rows`` (one batch) and flushes them to the file."""
        for row in rows:
            if self._csv:
                self._csv.writerow(csv_row(row, self.top_k, self.gradcam))
            else:
                self._file.write(jobdir.to_json(row) + "\n")
            self.images += 1
            self.errors += "error" in row
        self._file.flush()


@contextlib.contextmanager
def open_rows(path, top_k, gradcam=False):
    """A context manager: a :class:`RowWriter` over the ``--output`` file ``path``.

    A local file is written in place (its folder created); a ``gs://`` one is
    written to a temporary local file and uploaded on exit, also when the run
    stopped early: its rows are whole.

    Args:
        path: Local path or ``gs://`` URI ending with ``.csv`` or ``.jsonl``.
        top_k: Ranks of the CSV's columns.
        gradcam: Whether the CSV has a ``gradcam`` column.
    """
    file_format = output_format(path)
    with contextlib.ExitStack() as stack:
        local = path
        if storage.is_gcs(path):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="predict-"))
            local = os.path.join(folder, f"rows.{file_format}")
            stack.callback(storage.upload_file, local, path)  # Runs after the file below is closed.
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # newline="": the csv module writes its own line ends (RFC 4180's CRLF).
        with open(local, "w", encoding="utf-8", newline="") as file:
            yield RowWriter(file, file_format, top_k, gradcam)


def check_output_file(path):
    """Refuses an ``--output`` that is a folder, a FIFO or device, or whose folder cannot be written.

    Checked before any work; a FIFO would block the run at the first row.

    Raises:
        contracts.cli.OutputPathError: When the file cannot be written there.
    """
    if not path or storage.is_gcs(path):
        return
    if os.path.isdir(path):
        raise cli.OutputPathError(f"--output {path}: is a folder, not a file")
    if os.path.exists(path) and not os.path.isfile(path):
        raise cli.OutputPathError(f"--output {path}: {storage.NOT_A_REGULAR_FILE}")
    cli.check_writable_dir(os.path.dirname(os.path.abspath(path)), f"--output {path}: its folder")


def write_document(rows, out):
    """Writes ``--json``'s one document: ``{"predictions": [...], "errors": [...]}``."""
    predictions = [row for row in rows if "error" not in row]
    errors = [row for row in rows if "error" in row]
    out.write(jobdir.to_json({"predictions": predictions, "errors": errors}, indent=2))
    out.write("\n")


def write_tables(rows, out):
    """Writes a ranked table per predicted image (errors went to stderr as they came)."""
    for row in rows:
        if "error" not in row:
            out.write(table(row))


def table(result):
    """One image's table: its path, then ``R. class  probability%`` per rank."""
    width = max(len(entry["class"]) for entry in result["top"])
    lines = [result["image"]]
    lines += [f"  {e['rank']}. {e['class']:<{width}}  {100 * e['probability']:6.2f}%" for e in result["top"]]
    if "gradcam" in result:
        lines.append(f"  gradcam: {result['gradcam']}")
    return "\n".join(lines) + "\n\n"


def panel_names(paths):
    """Returns ``{path: "<stem>.png"}``: each image's ``--gradcam`` panel file, stems made unique."""
    names, used = {}, set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "image"
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        names[path] = f"{name}.png"
    return names


def save_panel(target, pixels, heatmap, name, probability):
    """Saves one original | heatmap | overlay panel (local or ``gs://``)."""
    from explain import render

    render.save_png(render.panel(pixels, heatmap, None, name, probability), target)
