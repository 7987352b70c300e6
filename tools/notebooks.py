"""Maintainer commands for the chapter notebooks.

    python tools/notebooks.py execute [NOTEBOOK ...]   # `make notebooks`
    python tools/notebooks.py student [--out DIR]      # `make student`

`execute` first writes the setup cell (built from `_config.yml`, so a fork only edits
that file) and the closing progress cell, then re-executes each notebook in place from a
clean kernel, saving the widget state so the website can show the widgets, and collapses
on the website the cells that only draw a figure (`collapse_drawing_cells`).  `student`
writes copies without solutions into `student/` (committed: the website offers them for
download and Colab opens them from the repository) and rewrites their table of links in
`instructors.md`.
"""

import argparse
import ast
import re
import sys
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
STUDENT = ROOT / "student"
GUIDE = ROOT / "instructors.md"
LINKS_START = "% Student copies: this table is written by `make student`; do not edit it.\n"
LINKS_END = "% End of the table of student copies.\n"
SETUP_TAG = "remove-cell"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# In a function the stub raises, so the check says "not yet"; at top level the stub leaves
# the value defined above the solution (an empty answer), so the check cell still runs.
FUNCTION_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
VALUE_STUB = ("# YOUR CODE HERE",)
PROGRESS_CALL = "attnlib.exercises.progress("
SOLUTION_START = re.compile(r"^:{3,}\{solution-start\}")
SOLUTION_END = re.compile(r"^(:{3,})\{solution-end\}")
EXERCISE = re.compile(r"^(?P<fence>:{3,})\{exercise\}[ \t]*(?P<title>[^\n]*)\n"
                      r"(?::[\w-]+:[^\n]*\n)*(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
COLLAPSED_TAG = "hide-input"  # the website shows the output, and the code on a click
DRAWING_NAMES = {"plt", "attention_heatmap"}  # pyplot, and attnlib's heatmap


def chapter_notebooks():
    return sorted(CHAPTERS.glob("*.ipynb"))


def repository(config=ROOT / "_config.yml"):
    """(url, branch) of the book's repository, from `_config.yml`."""
    repository = yaml.safe_load(Path(config).read_text())["repository"]
    return repository["url"].rstrip("/"), repository.get("branch", "main")


def setup_cell_source(config=ROOT / "_config.yml"):
    """The first cell of every chapter: installs attnlib on Colab, does nothing elsewhere."""
    url, branch = repository(config)
    return (
        "# Setup: on Colab, install the course library (attnlib); elsewhere, nothing to do.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    REPOSITORY = "{url}"\n'
        f'    %pip install --quiet "attnlib @ git+{{REPOSITORY}}@{branch}"'
    )


def write_setup_cell(nb):
    cell = nbformat.v4.new_code_cell(setup_cell_source(), metadata={"tags": [SETUP_TAG]})
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "code" and "google.colab" in first.source:
        first.source, first.metadata = cell.source, cell.metadata
    else:
        nb.cells.insert(0, cell)


def chapter_of(nb):
    """The chapter prefix ("ch3") of the exercises that a notebook checks."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    chapters = {name.split(".")[0] for name in re.findall(r'attnlib\.check\("([^"]+)"', code)}
    if len(chapters) != 1:
        raise ValueError(f"a chapter's checks should name one chapter, got {sorted(chapters)}")
    return chapters.pop()


def progress_cell_source(chapter):
    return ("# Where you stand: which of this chapter's exercises you passed in this session\n"
            f'attnlib.exercises.progress("{chapter}")')


def write_progress_cell(nb):
    """End the notebook with the call that lists the chapter's exercises and which of
    them the learner has passed (replacing an older one)."""
    cell = nbformat.v4.new_code_cell(progress_cell_source(chapter_of(nb)), id="progress")
    last = nb.cells[-1] if nb.cells else None
    if last is not None and last.cell_type == "code" and PROGRESS_CALL in last.source:
        last.source = cell.source
    else:
        nb.cells.append(cell)


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
    write_progress_cell(nb)
    mark_solution_cells(nb)
    start = time.perf_counter()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", store_widget_state=True, record_timing=False,
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


def strip_solutions(nb, keep_solution_code=False):
    """A student copy: solution code replaced by a stub, the solution dropdowns (and the
    text inside them) removed, exercise boxes turned into plain headings (Jupyter and
    Colab do not render MyST directives), outputs cleared.  With `keep_solution_code`
    the solution cells stay whole: nbgrader's source version, which nbgrader clears."""
    cells = []
    state = "outside"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            source, state = _outside_solutions(cell.source, state)
            if not source.strip():
                continue
            cell.source = EXERCISE.sub(_plain_exercise, source)
        elif cell.cell_type == "code":
            if BEGIN in cell.source and not keep_solution_code:
                cell.source = _replace_solution(cell.source)
                cell.metadata.pop("nbgrader", None)
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        elif state != "outside":
            continue
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    return nb


def student_copy(path):
    """What `make student` writes for the chapter at `path`."""
    nb = strip_solutions(nbformat.read(path, as_version=4))
    write_progress_cell(nb)
    return nb


def write_student_copies(out=STUDENT):
    """Write every chapter's student copy into `out`; when `out` is the committed folder,
    also rewrite the guide's table of links to them."""
    out.mkdir(parents=True, exist_ok=True)
    for path in chapter_notebooks():
        nbformat.write(student_copy(path), out / path.name)
        print(out / path.name)
    if out.resolve() == STUDENT:
        GUIDE.write_text(with_student_links(GUIDE.read_text()))
        print(f"{GUIDE.name}: table of student copies rewritten")


def colab_url(path, config=ROOT / "_config.yml"):
    """The Colab link of a notebook at `path` (relative to the repository root)."""
    url, branch = repository(config)
    colab = yaml.safe_load(Path(config).read_text())["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{url.removeprefix('https://github.com/')}/blob/{branch}/{path}"


def student_links_table():
    """The guide's table: each chapter's student copy, to download or to open on Colab."""
    rows = ["| chapter | student notebook | open on Colab |", "|---|---|---|"]
    for path in chapter_notebooks():
        title = chapter_title(nbformat.read(path, as_version=4))
        copy = f"student/{path.name}"
        rows.append(f"| {title} | {{download}}`{path.name} <{copy}>` | "
                    f"[open on Colab]({colab_url(copy)}) |")
    return "\n".join(rows)


def chapter_title(nb):
    """The notebook's title: its first level-1 heading."""
    return next(line[2:].strip() for cell in nb.cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if line.startswith("# "))


def with_student_links(guide):
    """`guide` (the text of instructors.md) with its table of student copies rewritten."""
    start, end = guide.index(LINKS_START) + len(LINKS_START), guide.index(LINKS_END)
    return f"{guide[:start]}\n{student_links_table()}\n\n{guide[end:]}"


def _outside_solutions(source, state):
    """The lines of a markdown cell outside solution dropdowns, which may span cells;
    `state` carries over from the cell before ("outside", "inside" or a closing fence)."""
    kept = []
    for line in source.splitlines():
        if state == "outside":
            if SOLUTION_START.match(line):
                state = "inside"
            else:
                kept.append(line)
        elif state == "inside":
            end = SOLUTION_END.match(line)
            if end:
                state = end.group(1)  # the fence that closes the end marker
        else:
            if line.strip() != state:
                kept.append(line)
            state = "outside"
    return "\n".join(kept).strip(), state


def _plain_exercise(match):
    return f"### Exercise: {match['title'].strip()}\n\n{match['body'].strip()}"


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
    student.add_argument("--out", type=Path, default=STUDENT)
    args = parser.parse_args(argv)

    if args.command == "execute":
        for path in args.notebooks or chapter_notebooks():
            print(f"{path.name}: executed in {execute(path):.1f} s", flush=True)
    else:
        write_student_copies(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
