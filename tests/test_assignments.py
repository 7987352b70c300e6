"""The nbgrader course that `make assignments` writes, and the one table of points that
it and the instructors' guide follow (nbgrader itself runs in test_nbgrader_round_trip)."""

import re

import nbformat
import pytest
from nbgrader.nbgraderformat import MetadataValidator
from traitlets.config import Config

from attnlib.exercises import available
from tools.assignments import (
    CELL_TIMEOUT,
    KINDS,
    POINTS,
    autograder_id,
    check_name,
    source_notebook,
    write_course,
)
from tools.notebooks import BEGIN, ROOT, chapter_notebooks, repository

pytestmark = pytest.mark.notebooks  # runs or reads the chapter notebooks

GUIDE = (ROOT / "instructors.md").read_text()


def test_every_exercise_has_points_and_only_exercises_do():
    assert sorted(POINTS) == available()


def test_a_prediction_is_worth_less_than_code():
    assert {kind for kind, _ in POINTS.values()} <= set(KINDS)
    predictions = [points for kind, points in POINTS.values() if kind == "predict"]
    code = [points for kind, points in POINTS.values() if kind != "predict"]
    assert predictions and code and max(predictions) < min(code)


def test_the_guide_shows_the_points_table():
    rows = re.findall(r"^\| `(ch\d+\.\w+)` \| (\w+) \| (\d+) \|", GUIDE, re.M)
    assert {name: (kind, int(points)) for name, kind, points in rows} == POINTS
    assert len(rows) == len(POINTS), "an exercise appears twice in the guide's points table"


def test_the_guide_gives_each_chapter_its_exercises_and_points():
    rows = re.findall(r"^\| \[(\d+)\. .*\]\(chapters/\S+\.ipynb\) \|.*\| (\d+) \| (\d+) \|$",
                      GUIDE, re.M)
    expected = {}
    for name, (_, points) in POINTS.items():
        count, total = expected.get(name.split(".")[0][2:], (0, 0))
        expected[name.split(".")[0][2:]] = (count + 1, total + points)
    assert {c: (int(n), int(t)) for c, n, t in rows} == expected


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.stem)
def test_source_notebook_has_an_answer_cell_then_a_test_cell_per_exercise(path):
    chapter = nbformat.read(path, as_version=4)
    names = [check_name(c) for c in chapter.cells if check_name(c)]
    nb = source_notebook(path)
    MetadataValidator().validate_nb(nb)  # nbgrader's own check: ids unique, fields right
    tests = [(i, c) for i, c in enumerate(nb.cells)
             if c.metadata.get("nbgrader", {}).get("grade")]
    assert [c.metadata.nbgrader.grade_id for _, c in tests] == [autograder_id(n) for n in names]
    for (i, cell), name in zip(tests, names, strict=True):
        meta = cell.metadata.nbgrader
        assert (meta.locked, meta.solution, meta.points) == (True, False, POINTS[name][1])
        assert cell.source.startswith(f'verdict = attnlib.check("{name}", ')
        answer = nb.cells[i - 1]
        assert answer.metadata.nbgrader.solution and BEGIN in answer.source
    text = "\n".join(c.source for c in nb.cells)
    assert "{solution" not in text and "{exercise}" not in text
    assert text.count("### Exercise: ") == len(names)
    assert all(not c.outputs for c in nb.cells if c.cell_type == "code")


def test_solution_text_stays_out_of_the_source_notebook():
    """Explanations inside a solution dropdown cannot be hidden by nbgrader: they go."""
    path = next(p for p in chapter_notebooks() if p.name.startswith("01"))
    chapter = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    explanation = "Only\nself-attention, where both come from the same sequence, makes it square."
    assert explanation in chapter
    assert explanation not in "\n".join(c.source for c in source_notebook(path).cells)


def test_write_course_writes_one_assignment_per_chapter_and_the_config(tmp_path):
    assignments = write_course(tmp_path)
    assert assignments == [f"ch{int(p.name[:2])}" for p in chapter_notebooks()]
    for assignment, path in zip(assignments, chapter_notebooks(), strict=True):
        assert (tmp_path / "source" / assignment / path.name).is_file()
    config = Config()
    exec((tmp_path / "nbgrader_config.py").read_text(), {"get_config": lambda: config})
    assert config.Execute.timeout == CELL_TIMEOUT
    assert config.IgnorePattern.enabled
    warning = "<ipython-input-3>:2: UserWarning: To copy construct from a tensor, ..."
    assert re.search(config.IgnorePattern.pattern, warning)
    assert not re.search(config.IgnorePattern.pattern, "AssertionError: the std of q . k is 16")
    assert config.CourseDirectory.course_id == repository()[0].rsplit("/", 1)[-1]
    assert write_course(tmp_path / "two", chapters=(2, 3)) == ["ch2", "ch3"]


def test_check_name_reads_a_check_cell_and_refuses_one_with_more_code():
    cell = nbformat.v4.new_code_cell('attnlib.check("ch2.attention", my_attention)')
    assert check_name(cell) == "ch2.attention"
    assert check_name(nbformat.v4.new_code_cell("x = 1")) is None
    assert check_name(nbformat.v4.new_markdown_cell('attnlib.check("ch2.attention", f)')) is None
    mixed = nbformat.v4.new_code_cell('f = g\nattnlib.check("ch2.attention", f)')
    with pytest.raises(ValueError, match="one attnlib.check"):
        check_name(mixed)


def test_the_suggested_assignments_add_up_their_chapters_points():
    section = GUIDE.split("## Suggested assignments", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| [^|]+ \| (\d+)(?: and (\d+)| to (\d+)| alone) \| (\d+) \|",
                      section, re.M)
    assert len(rows) >= 4
    for first, second, last, points in rows:
        chapters = ([int(first), int(second)] if second else
                    list(range(int(first), int(last) + 1)) if last else [int(first)])
        assert int(points) == sum(p for name, (_, p) in POINTS.items()
                                  if int(name.split(".")[0][2:]) in chapters), (first, points)
