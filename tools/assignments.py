"""An nbgrader course made from the chapters (`make assignments`).

    python -m tools.assignments [--out course] [CHAPTER ...]

writes `COURSE/nbgrader_config.py` and one nbgrader assignment per chapter,
`COURSE/source/ch<N>/<chapter>.ipynb`: the chapter without its outputs and solution
dropdowns, each solution cell marked as nbgrader's "autograded answer", and each check
cell turned into a read-only "autograder tests" cell worth the exercise's points
(`POINTS`). That cell shows the learner the check's one-sentence verdict and, in a
hidden test that only the autograder runs, fails when the verdict is "Not yet".
From there on it is nbgrader's own workflow (see instructors.md):
`nbgrader generate_assignment ch2`, release, collect, `nbgrader autograde ch2`,
`nbgrader generate_feedback ch2`.
"""

import argparse
import ast
import sys
from pathlib import Path

import nbformat

from tools.notebooks import (
    ROOT,
    chapter_notebooks,
    chapter_of,
    mark_solution_cells,
    repository,
    strip_solutions,
    write_progress_cell,
)

#: Points per exercise and its kind: a prediction is worth less than code that
#: implements a piece of the chapter or extends it. The one table of points: the
#: assignments and the guide (instructors.md, tested) both follow it.
POINTS = {
    "ch1.shapes": ("predict", 1),
    "ch1.bank_money": ("predict", 1),
    "ch1.project_qkv": ("implement", 2),
    "ch1.cross_scores": ("extend", 3),
    "ch2.predict_std": ("predict", 1),
    "ch2.stable_softmax": ("implement", 2),
    "ch2.attention": ("implement", 2),
    "ch2.logsumexp": ("extend", 3),
    "ch3.visible_pairs": ("predict", 1),
    "ch3.causal_attention": ("implement", 2),
    "ch3.decode_step": ("extend", 3),
    "ch4.head_targets": ("predict", 1),
    "ch4.merge_heads": ("implement", 2),
    "ch4.grouped_query": ("extend", 3),
    "ch5.doubling": ("predict", 1),
    "ch5.fit_exponent": ("implement", 2),
    "ch5.window_flops": ("extend", 3),
    "ch6.causal_blocks": ("predict", 1),
    "ch6.normalised_update": ("implement", 2),
    "ch6.block_step": ("implement", 2),
    "ch6.merge": ("extend", 3),
    "ch7.t4_fit": ("predict", 1),
    "ch7.tflops": ("implement", 2),
    "ch7.t4_blocks": ("extend", 3),
    "ch8.recall_capacity": ("predict", 1),
    "ch8.linear_step": ("implement", 2),
    "ch8.scan_combine": ("extend", 3),
}
KINDS = ("predict", "implement", "extend")
CELL_TIMEOUT = 120  # seconds per cell when nbgrader autogrades, as for the book build
WARNING = r"\w+Warning: "  # Python's warning lines: "file.py:3: UserWarning: ..."

CONFIG = '''\
# nbgrader's configuration for the course, written by `make assignments`
# (tools/assignments.py). Run nbgrader's commands from this folder.
c = get_config()  # noqa: F821 (nbgrader defines it)

c.CourseDirectory.course_id = "{course_id}"
# Autograding runs each submitted notebook from top to bottom in a fresh kernel.
c.Execute.timeout = {timeout}
# nbgrader gives 0 to a test cell with any output on stderr; a warning printed by the
# student's code (PyTorch's about torch.tensor(a_tensor), say) is no failure: the
# check's verdict decides.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"{warning}"
'''


def check_name(cell):
    """The exercise that a check cell, `attnlib.check("ch2.attention", ...)`, checks; None
    for any other cell. A cell that calls check among other code is refused."""
    if cell.cell_type != "code" or "attnlib.check(" not in cell.source:
        return None
    body = ast.parse(cell.source).body
    call = body[0].value if len(body) == 1 and isinstance(body[0], ast.Expr) else None
    if not (isinstance(call, ast.Call) and ast.unparse(call.func) == "attnlib.check"
            and call.args and isinstance(call.args[0], ast.Constant)):
        raise ValueError(f"a check cell should hold one attnlib.check(...) call, got:\n"
                         f"{cell.source}")
    return call.args[0].value


def autograder_id(name):
    """nbgrader's grade id of the autograder cell of exercise `name`."""
    return "check_" + name.replace(".", "_")


def make_autograder_cell(cell, name):
    """Turn a check cell into a read-only nbgrader test cell worth `POINTS[name]`."""
    cell.source = (f"verdict = {cell.source.strip()}\n"
                   "display(verdict)\n"
                   "### BEGIN HIDDEN TESTS\n"
                   "assert verdict, verdict.message\n"
                   "### END HIDDEN TESTS")
    cell.metadata["nbgrader"] = {
        "grade": True, "grade_id": autograder_id(name), "locked": True,
        "points": POINTS[name][1], "schema_version": 3, "solution": False, "task": False,
    }


def source_notebook(path):
    """nbgrader's source version of the chapter at `path`."""
    nb = nbformat.read(path, as_version=4)
    mark_solution_cells(nb)
    strip_solutions(nb, keep_solution_code=True)
    write_progress_cell(nb)
    for cell in nb.cells:
        name = check_name(cell)
        if name is not None:
            if name not in POINTS:
                raise ValueError(f"exercise {name!r} has no points: add it to POINTS in "
                                 f"{Path(__file__).name}")
            make_autograder_cell(cell, name)
    return nb


def write_course(out, chapters=()):
    """Write the nbgrader course into `out`: its configuration and the source version of
    each chapter (all of them, or the numbers in `chapters`); return the assignment names."""
    paths = [p for p in chapter_notebooks() if not chapters or int(p.name[:2]) in chapters]
    assignments = []
    for path in paths:
        nb = source_notebook(path)
        assignment = chapter_of(nb)
        (out / "source" / assignment).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / "source" / assignment / path.name)
        assignments.append(assignment)
    course_id = repository()[0].rsplit("/", 1)[-1]
    (out / "nbgrader_config.py").write_text(CONFIG.format(
        course_id=course_id, timeout=CELL_TIMEOUT, warning=WARNING))
    return assignments


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "course")
    parser.add_argument("chapters", nargs="*", type=int, help="chapter numbers (default: all)")
    args = parser.parse_args(argv)
    for assignment in write_course(args.out, args.chapters):
        print(f"{args.out / 'source' / assignment}")
    print(f"{args.out / 'nbgrader_config.py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
