"""The chapter notebooks follow the course conventions, and their stored outputs are
those of a complete, clean run (strict nbval then checks that they reproduce)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

from tools.notebooks import (
    BEGIN,
    END,
    GUIDE,
    ROOT,
    STUDENT,
    chapter_notebooks,
    colab_url,
    progress_cell_source,
    setup_cell_source,
    strip_solutions,
    student_copy,
    with_student_links,
    write_progress_cell,
)

pytestmark = pytest.mark.notebooks

NOTEBOOKS = chapter_notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def read(path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def text_outputs(cell):
    for out in cell.outputs:
        if out.output_type == "stream":
            yield out.text
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/"):
                yield value


def test_table_of_contents_lists_exactly_the_chapter_notebooks():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]
             if entry["file"].startswith("chapters/")]
    assert files == [f"chapters/{p.stem}" for p in NOTEBOOKS]
    assert NOTEBOOKS, "no chapter notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_code_cell_ran_once_in_order_without_errors(path):
    cells = [c for c in code_cells(read(path)) if c.source.strip()]
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), (
        "run `make notebooks`: the stored outputs are not those of one clean run")
    for cell in cells:
        for out in cell.outputs:
            assert out.output_type != "error", f"stored error in:\n{cell.source}"
            assert not (out.output_type == "stream" and out.name == "stderr"), (
                f"stderr output (a warning?) in:\n{cell.source}\n{out.text}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_setup_cell_comes_first_and_matches_the_config(path):
    first = code_cells(read(path))[0]
    assert first.source == setup_cell_source(), "run `make notebooks` to rewrite it"
    assert "remove-cell" in first.metadata.get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_outputs_hold_no_memory_addresses(path):
    for cell in code_cells(read(path)):
        for text in text_outputs(cell):
            assert not re.search(r" at 0x[0-9a-f]+", text), f"address in output of:\n{cell.source}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_few_cells_skip_output_comparison(path):
    cells = code_cells(read(path))
    ignored = [c for c in cells if "nbval-ignore-output" in c.metadata.get("tags", [])]
    assert len(ignored) <= len(cells) // 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_figure_has_alt_text(path):
    for cell in code_cells(read(path)):
        if any("image/png" in out.get("data", {}) for out in cell.outputs):
            alt = cell.metadata.get("mystnb", {}).get("image", {}).get("alt", "")
            assert len(alt) > 20, f"figure without alt text:\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_chapter_shape_objectives_summary_and_checked_exercises(path):
    nb = read(path)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "**After this chapter you can**" in markdown
    assert markdown.index("## Summary") < markdown.index("## Exercises")
    exercises = re.findall(r"\{exercise\}.*\n:label: (\S+)", markdown)
    assert len(exercises) >= 3
    for label in exercises:
        solution = r"\{solution-start\} " + re.escape(label) + r"\n:class: dropdown"
        assert re.search(solution, markdown)
    solutions = [c for c in code_cells(nb) if BEGIN in c.source and END in c.source]
    assert len(solutions) == len(exercises)
    assert sorted(c.metadata["nbgrader"]["grade_id"] for c in solutions) == sorted(exercises)
    assert all(c.metadata["nbgrader"]["solution"] for c in solutions)
    checks = [c for c in code_cells(nb) if "attnlib.check(" in c.source]
    assert len(checks) == len(exercises)
    for cell in code_cells(nb):
        if "attnlib.check(" in cell.source:
            assert any("✅ Correct" in t for t in text_outputs(cell)), cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_headings_hold_no_maths(path):
    """The website's navigation and page contents show headings as plain text, where
    MathJax does not run: use Unicode (√dₖ, QKᵀ) in headings, $...$ in the text."""
    for cell in read(path).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                assert not (line.startswith("#") and "$" in line), line


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_has_no_solution_but_keeps_the_checks(path):
    nb = read(path)
    solution_lines = []
    for cell in code_cells(nb):
        if BEGIN in cell.source:
            inside = cell.source.split(BEGIN, 1)[1].split(END, 1)[0]
            solution_lines += [line.strip() for line in inside.splitlines() if line.strip()]
    student = strip_solutions(read(path))
    student_code = "\n".join(c.source for c in code_cells(student))
    for line in solution_lines:
        assert line not in student_code
    assert "{solution" not in "\n".join(c.source for c in student.cells)
    assert student_code.count("attnlib.check(") == "\n".join(
        c.source for c in code_cells(nb)).count("attnlib.check(")
    assert all(not c.outputs for c in code_cells(student))
    to_python = TransformerManager().transform_cell  # turns %magics into Python calls
    for cell in code_cells(student):
        compile(to_python(cell.source), path.name, "exec")  # the stubs leave valid Python


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_runs_and_every_check_says_not_yet(path):
    """What an instructor hands out runs from top to bottom, no check passes, and the
    closing progress list says that nothing was tried yet (stubs are not tries)."""
    student = student_copy(path)
    NotebookClient(student, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    verdicts = ["".join(text_outputs(c)) for c in code_cells(student)
                if "attnlib.check(" in c.source]
    assert verdicts and all("❌ Not yet" in v and "✅" not in v for v in verdicts), verdicts
    (shown,) = code_cells(student)[-1].outputs
    progress = shown.data["text/plain"].splitlines()
    assert progress[0].endswith(f": 0 of {len(verdicts)} exercises passed in this session")
    assert len(progress) == 1 + len(verdicts)
    assert all(line.endswith(": not tried yet") for line in progress[1:]), progress


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_keeps_every_exercise_text_as_a_plain_heading(path):
    chapter = "\n".join(c.source for c in read(path).cells if c.cell_type == "markdown")
    student = "\n".join(c.source for c in student_copy(path).cells if c.cell_type == "markdown")
    exercises = re.findall(r"^(:{3,})\{exercise\} ([^\n]*)\n:label: \S+\n(.*?)^\1$", chapter,
                           re.M | re.S)
    assert len(exercises) >= 3
    for _, title, body in exercises:
        assert f"### Exercise: {title}\n\n{body.strip()}" in student
    inside = re.findall(r"^:::\{solution-start\}.*?^:::\{solution-end\}", chapter, re.M | re.S)
    for dropdown in inside:  # the text of the solutions goes with them
        for line in dropdown.splitlines()[3:-1]:
            assert not line.strip() or line not in student, line
    assert ":::" not in student and "{exercise}" not in student


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_student_copy_is_up_to_date(path):
    committed = STUDENT / path.name
    assert committed.is_file(), "run `make student` and commit student/"
    assert read(committed) == student_copy(path), "run `make student` and commit student/"


def test_student_folder_holds_only_the_copies_and_git_tracks_them():
    assert sorted(p.name for p in STUDENT.iterdir()) == sorted(p.name for p in NOTEBOOKS)
    tracked = subprocess.run(["git", "ls-files", "student"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert sorted(tracked) == sorted(f"student/{p.name}" for p in NOTEBOOKS), (
        "Colab opens the copies from the repository: commit student/")


def test_guide_links_each_student_copy_for_download_and_on_colab():
    guide = GUIDE.read_text()
    assert with_student_links(guide) == guide, "run `make student` to rewrite the table"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repository = config["repository"]["url"].removeprefix("https://github.com/")
    for path in NOTEBOOKS:
        assert f"{{download}}`{path.name} <student/{path.name}>`" in guide
        url = (f"{config['launch_buttons']['colab_url']}/github/{repository}/blob/"
               f"{config['repository']['branch']}/student/{path.name}")
        assert url == colab_url(f"student/{path.name}") and f"]({url})" in guide


def test_progress_cell_closes_a_notebook_once():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('attnlib.check("ch3.visible_pairs", visible)'),
        nbformat.v4.new_code_cell('attnlib.check("ch3.decode_step", decode_step)')])
    write_progress_cell(nb)
    write_progress_cell(nb)
    assert [c.source for c in nb.cells[2:]] == [progress_cell_source("ch3")]
    assert nb.cells[2].source.endswith('attnlib.exercises.progress("ch3")')
    nb.cells.insert(0, nbformat.v4.new_code_cell('attnlib.check("ch2.attention", f)'))
    with pytest.raises(ValueError, match=r"one chapter, got \['ch2', 'ch3'\]"):
        write_progress_cell(nb)


def test_student_stub_in_a_function_raises_and_a_value_stub_is_a_comment():
    from tools.notebooks import _replace_solution

    function = f"def f(x):\n    {BEGIN}\n    return x\n    {END}\n"
    assert _replace_solution(function) == (
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()")
    value = f"answer = {{}}\n{BEGIN}\nanswer = {{'Q': 1}}\n{END}"
    assert _replace_solution(value) == "answer = {}\n# YOUR CODE HERE"
    with pytest.raises(ValueError, match="never ends"):
        _replace_solution(f"{BEGIN}\nx = 1")


def test_strict_nbval_fails_when_a_stored_output_drifts(tmp_path):
    """Guards the test command itself (its flags and sanitizer): a notebook whose stored
    outputs a fresh run reproduces passes, and one changed character fails it."""
    source = ["import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(2, 1))\nfig",
              "print(round(2 ** 0.5, 4))"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in source])
    NotebookClient(nb, kernel_name="python3").execute()
    nbformat.write(nb, tmp_path / "same.ipynb")
    nb.cells[1].outputs[0].text = "1.4143\n"
    nbformat.write(nb, tmp_path / "drifted.ipynb")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
               "--nbval-current-env", "--nbval-sanitize-with",
               str(ROOT / "tests" / "nbval_sanitize.cfg"), "--rootdir", str(tmp_path),
               str(tmp_path / "same.ipynb"), str(tmp_path / "drifted.ipynb")]
    # the caller's settings (a matplotlib backend, pytest options) must not reach the run
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "PYTEST_ADDOPTS")}
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert "1 failed, 3 passed" in run.stdout, run.stdout[-2000:]
    assert "drifted.ipynb::Cell 1" in run.stdout and "same.ipynb::Cell 1 FAILED" not in run.stdout


def test_pytest_does_not_collect_build_copies():
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval", "-p",
         "no:cacheprovider", str(ROOT)], cwd=ROOT, capture_output=True, text=True).stdout
    paths = [line.split("::")[0] for line in collected.splitlines()]
    assert not [p for p in paths if p.startswith(("_build", ".venv", "student"))]
    assert Path("chapters", NOTEBOOKS[0].name).as_posix() in collected
