"""The instructors' path with nbgrader itself, end to end, offline: generate the
assignments of chapters 2 and 3, submit them as two students (one right in every
exercise, with answers written differently from the library's; one making the usual
mistakes), autograde both, and read the scores and the feedback.

Expected scores come from the points table (`tools.assignments.POINTS`), and whether an
answer is right is confirmed by running the same answer through `attnlib.check` here,
outside nbgrader. The whole round trip takes about a minute on two cores: nbgrader runs
each submitted notebook from top to bottom."""

import html
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pytest
import torch
from nbgrader.api import Gradebook

import attnlib
from tools.assignments import POINTS, autograder_id, write_course

pytestmark = pytest.mark.notebooks  # runs or reads the chapter notebooks

CHAPTERS = {2: "ch2", 3: "ch3"}

# Right answers, none of them the library's own code.
RIGHT = {
    "ch2.predict_std": "predicted_std = (256 ** 0.5, 16 / 16)",
    "ch2.stable_softmax": '''\
def my_softmax(x):
    e = (x - x.amax(-1, keepdim=True)).exp()
    return torch.nn.functional.normalize(e, p=1, dim=-1)
''',
    "ch2.attention": '''\
def my_attention(q, k, v):
    scores = torch.einsum("...qd,...kd->...qk", q, k) / q.size(-1) ** 0.5
    weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
    return torch.einsum("...qk,...kd->...qd", weights, v)
''',
    "ch2.logsumexp": '''\
def my_logsumexp(x):
    x = torch.tensor(x)  # right, though PyTorch warns (on stderr) that it copies a tensor
    m = x.amax(-1)
    return m + (x - m[..., None]).exp().sum(-1).log()
''',
    "ch3.visible_pairs": ("visible = {'causal': sum(range(1, 11)),\n"
                          "           'sliding_window': sum(min(i + 1, 3) for i in range(10))}"),
    "ch3.causal_attention": '''\
def causal_attention(q, k, v):
    n = q.shape[-2]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v
''',
    "ch3.decode_step": '''\
def decode_step(x_new, cache_k, cache_v, w_q, w_k, w_v):
    keys = torch.cat([cache_k, x_new @ w_k])
    values = torch.cat([cache_v, x_new @ w_v])
    n_new, n = x_new.shape[0], keys.shape[0]
    position = torch.arange(n - n_new, n)[:, None]
    scores = (x_new @ w_q) @ keys.T / math.sqrt(w_q.shape[1])
    scores[torch.arange(n)[None, :] > position] = -math.inf
    return torch.softmax(scores, dim=1) @ values, keys, values
''',
}

# The usual mistakes, two answers right, and one exercise left as released (None).
WRONG = {
    "ch2.predict_std": "predicted_std = (256, 1)  # the variance, not the std",
    "ch2.stable_softmax": '''\
def my_softmax(x):
    e = torch.exp(x - x.max())
    return e / e.sum(dim=0)  # the wrong axis
''',
    "ch2.attention": '''\
def my_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v  # no 1/sqrt(d_k)
''',
    "ch2.logsumexp": RIGHT["ch2.logsumexp"],
    "ch3.visible_pairs": RIGHT["ch3.visible_pairs"],
    "ch3.causal_attention": '''\
def causal_attention(q, k, v):
    n = q.shape[-2]
    sees = torch.ones(n, n, dtype=torch.bool).tril()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(sees, -math.inf), dim=-1) @ v  # mask not inverted
''',
    "ch3.decode_step": None,
}
SUBMISSIONS = {"right": RIGHT, "wrong": WRONG}
PHRASES = {  # what the feedback must name for each mistake
    "ch2.predict_std": "is the variance of q . k, not its standard deviation",
    "ch2.stable_softmax": "not 1: normalise over the last dimension",
    "ch2.attention": "without the division by sqrt(d_k)",
    "ch3.causal_attention": "masked_fill fills where the mask is True",
    "ch3.decode_step": "still raises NotImplementedError",
}


def nbgrader(course, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def exercise_cells(nb):
    """{exercise name: its solution cell} of a released notebook: each test cell checks
    the answer of the solution cell before it."""
    names = {autograder_id(name): name for name in POINTS}
    found, solution = {}, None
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            solution = cell
        elif meta.get("grade") and meta["grade_id"] in names:
            found[names[meta["grade_id"]]] = solution
    return found


def submit(course, student, assignment, answers):
    """Copy the released notebooks into the student's submission, answers filled in."""
    for released in sorted((course / "release" / assignment).glob("*.ipynb")):
        nb = nbformat.read(released, as_version=4)
        for name, cell in exercise_cells(nb).items():
            if answers[name] is not None:
                cell.source = answers[name]
        target = course / "submitted" / student / assignment / released.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)


def verdict_here(course, assignment, name, answers):
    """attnlib.check's verdict on the same answer, run in this process, not by nbgrader."""
    source = answers[name]
    if source is None:
        released = next((course / "release" / assignment).glob("*.ipynb"))
        source = exercise_cells(nbformat.read(released, as_version=4))[name].source
    namespace = {"math": math, "torch": torch}
    exec(source, namespace)
    (answer,) = [v for k, v in namespace.items() if k not in ("math", "torch", "__builtins__")]
    # as in nbgrader's fresh kernel: a warning is printed, not raised, and no earlier try of
    # this exercise was recorded (a prediction's feedback depends on its wrong tries)
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
        warnings.simplefilter("ignore")
        patch.setattr(attnlib.exercises, "_RECORDS", {})
        return attnlib.check(name, answer)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    assert write_course(course, chapters=tuple(CHAPTERS)) == list(CHAPTERS.values())
    nbgrader(course, "generate_assignment", "*", "--force")  # each command: every assignment
    for assignment in CHAPTERS.values():
        for student, answers in SUBMISSIONS.items():
            submit(course, student, assignment, answers)
    nbgrader(course, "autograde", "*", "--force")
    nbgrader(course, "generate_feedback", "*", "--force")
    return course


def exercises_of(assignment):
    return [name for name in POINTS if name.startswith(f"{assignment}.")]


CASES = [(student, assignment, name) for student in SUBMISSIONS
         for assignment in CHAPTERS.values() for name in exercises_of(assignment)]


def test_the_submissions_cover_every_exercise_of_the_two_chapters():
    for answers in SUBMISSIONS.values():
        assert sorted(answers) == sorted(n for a in CHAPTERS.values() for n in exercises_of(a))
    assert set(PHRASES) <= set(WRONG)


@pytest.mark.parametrize("student, assignment, name", CASES)
def test_each_exercise_scores_its_points_when_right_and_nothing_when_wrong(
        course, student, assignment, name):
    answers = SUBMISSIONS[student]
    right = answers[name] is not None and (student == "right" or answers[name] == RIGHT[name])
    assert bool(verdict_here(course, assignment, name, answers)) == right
    notebook = next((course / "source" / assignment).glob("*.ipynb")).stem
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        grade = gradebook.find_grade(autograder_id(name), notebook, assignment, student)
        assert (grade.score, grade.max_score) == (POINTS[name][1] if right else 0, POINTS[name][1])


@pytest.mark.parametrize("assignment", CHAPTERS.values())
def test_the_totals_are_full_marks_and_the_expected_partial_score(course, assignment):
    names = exercises_of(assignment)
    full = sum(POINTS[n][1] for n in names)
    partial = sum(POINTS[n][1] for n in names if WRONG[n] is not None and WRONG[n] == RIGHT[n])
    assert 0 < partial < full
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        assert gradebook.find_submission(assignment, "right").score == full
        assert gradebook.find_submission(assignment, "wrong").score == partial
        assert gradebook.find_assignment(assignment).max_score == full


@pytest.mark.parametrize("student, assignment, name", CASES)
def test_the_feedback_shows_the_verdict_sentence(course, student, assignment, name):
    answers = SUBMISSIONS[student]
    (feedback,) = (course / "feedback" / student / assignment).glob("*.html")
    verdict = verdict_here(course, assignment, name, answers)
    assert html.escape(verdict.message) in feedback.read_text()
    if student == "wrong" and name in PHRASES:
        assert PHRASES[name] in verdict.message


def test_the_released_notebook_shows_the_verdict_but_not_the_hidden_test(course):
    released = next((course / "release" / "ch2").glob("*.ipynb"))
    source = "\n".join(c.source for c in nbformat.read(released, as_version=4).cells)
    assert 'verdict = attnlib.check("ch2.attention", my_attention)\ndisplay(verdict)' in source
    assert "assert verdict" not in source and "HIDDEN TESTS" not in source
    assert "### BEGIN SOLUTION" not in source and "torch.softmax(scores" not in source

