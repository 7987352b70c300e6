"""Maintainer commands for the chapter notebooks.

    python tools/notebooks.py execute [NOTEBOOK ...]   # `make notebooks`
    python tools/notebooks.py student [--out DIR]      # `make student`

`execute` first writes the setup cell (built from `_config.yml`, so a fork only edits
that file), then re-executes each notebook in place from a clean kernel, saving the
widget state so the website can show the widgets, and collapses on the website the
cells that only draw a figure (`collapse_drawing_cells`).  `student` writes copies
without solutions, for instructors.
"""

import argparse
import ast
import sys
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
SETUP_TAG = "remove-cell"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# In a function the stub raises, so the check says "not yet"; at top level the stub leaves
# the value defined above the solution (an empty answer), so the check cell still runs.
FUNCTION_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
VALUE_STUB = ("# YOUR CODE HERE",)
COLLAPSED_TAG = "hide-input"  # the website shows the output, and the code on a click
DRAWING_NAMES = {"plt", "attention_heatmap"}  # pyplot, and attnlib's heatmap


def chapter_notebooks():
    return sorted(CHAPTERS.glob("*.ipynb"))


def setup_cell_source(config=ROOT / "_config.yml"):
    """The first cell of every chapter: installs attnlib on Colab, does nothing elsewhere."""
    repository = yaml.safe_load(Path(config).read_text())["repository"]
    url, branch = repository["url"].rstrip("/"), repository.get("branch", "main")
    return (
        "# Setup: on Colab, install the course library (attnlib); elsewhere, nothing to do.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install --quiet "attnlib @ git+{url}@{branch}"'
    )


def write_setup_cell(nb):
    cell = nbformat.v4.new_code_cell(setup_cell_source(), metadata={"tags": [SETUP_TAG]})
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "code" and "google.colab" in first.source:
        first.source, first.metadata = cell.source, cell.metadata
    else:
        nb.cells.insert(0, cell)


def mark_solution_cells(nb):
    """Give each solution cell nbgrader's metadata, so that nbgrader's "generate
    assignment" clears it as our student build does."""
    label = None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "{solution-start}" in cell.source:
            label = cell.source.split("{solution-start}", 1)[1].split()[0]
        elif cell.cell_type == "code" and BEGIN in cell.source:
            cell.metadata["nbgrader"] = {
                "grade": False, "grade_id": label, "locked": False, "schema_version": 3,
                "solution": True, "task": False,
            }


def execute(path, timeout=300):
    """Re-execute one notebook in place; return the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    write_setup_cell(nb)
    mark_solution_cells(nb)
    start = time.perf_counter()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
        resources={"metadata": {"path": str(Path(path).parent)}},
    )
    client.execute()
    seconds = time.perf_counter() - start
    collapse_drawing_cells(nb)
    nbformat.write(nb, path)
    return seconds


def only_draws(source):
    """True when every top-level statement of `source` draws: it uses pyplot,
    `attention_heatmap`, or a name bound by an earlier drawing statement of the cell (a
    figure, its axes, a loop over them).  A line that computes something else teaches."""
    try:
        statements = ast.parse(source).body
    except SyntaxError:  # IPython magics: not plain drawing code
        return False
    drawing = set(DRAWING_NAMES)
    for statement in statements:
        names = {node.id for node in ast.walk(statement) if isinstance(node, ast.Name)}
        if not names & drawing:
            return False
        drawing |= {node.id for node in ast.walk(statement)
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    return bool(statements)


def shows_only_figures(cell):
    outputs = cell.get("outputs", [])
    return bool(outputs) and all("image/png" in out.get("data", {}) for out in outputs)


def collapse_drawing_cells(nb):
    """Tag `hide-input` the code cells whose outputs are all figures and whose code only
    draws them; untag the others.  Returns the collapsed cells."""
    collapsed = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = [t for t in cell.metadata.get("tags", []) if t != COLLAPSED_TAG]
        if shows_only_figures(cell) and only_draws(cell.source):
            tags.append(COLLAPSED_TAG)
            collapsed.append(cell)
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
    return collapsed


def strip_solutions(nb):
    """A student copy: solution code replaced by a stub, solution dropdowns removed,
    outputs cleared."""
    cells = []
    inside_dropdown = False
    for cell in nb.cells:
        source = cell.source
        if cell.cell_type == "markdown" and "{solution-start}" in source:
            inside_dropdown = True
            continue
        if cell.cell_type == "markdown" and "{solution-end}" in source:
            inside_dropdown = False
            continue
        if cell.cell_type == "code":
            if BEGIN in source:
                source = _replace_solution(source)
            cell.source, cell.outputs, cell.execution_count = source, [], None
            cell.metadata.pop("nbgrader", None)
        elif inside_dropdown:
            continue
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    return nb


def _replace_solution(source):
    out, lines, skipping = [], source.splitlines(), False
    for line in lines:
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub for stub in (FUNCTION_STUB if indent else VALUE_STUB))
            skipping = True
        elif line.strip() == END:
            skipping = False
        elif not skipping:
            out.append(line)
    if skipping:
        raise ValueError(f"a solution starts with {BEGIN!r} but never ends:\n{source}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("execute", help="re-execute notebooks in place")
    run.add_argument("notebooks", nargs="*", type=Path)
    student = commands.add_parser("student", help="write student copies without solutions")
    student.add_argument("--out", type=Path, default=ROOT / "student")
    args = parser.parse_args(argv)

    if args.command == "execute":
        for path in args.notebooks or chapter_notebooks():
            print(f"{path.name}: executed in {execute(path):.1f} s", flush=True)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in chapter_notebooks():
            nb = strip_solutions(nbformat.read(path, as_version=4))
            nbformat.write(nb, args.out / path.name)
            print(f"{args.out / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
