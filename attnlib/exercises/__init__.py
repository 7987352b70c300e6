"""Exercise checks: `check("ch1.project_qkv", my_qkv)` returns a one-sentence verdict.

Each chapter's checks live in `attnlib/exercises/ch<N>.py` and register themselves with
`@exercise("ch<N>.<name>")`.  A check calls the learner's function or reads the
learner's value, compares it with the library's own answer, and either returns a
sentence of praise or raises `Wrong` with a sentence saying what was expected and what
came back.  Whatever the learner's code does, `check` returns a `Verdict`; it never
lets a traceback reach the learner.

`check` also records, for this kernel, each exercise's wrong tries and whether it passed:
`attempts(name)` gives the wrong tries (a check can hint first and reveal later), and
`progress("ch3")` lists a chapter's exercises and which of them passed.
"""

import functools
import html
import importlib
import math
import pkgutil
import types
import warnings
from dataclasses import dataclass

import torch

_CHECKS = {}


class Wrong(Exception):
    """Raised by a check when the answer is not right; the message is the feedback."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: truthy when right; shown as one line in a notebook."""

    name: str
    passed: bool
    message: str

    def __bool__(self):
        return self.passed

    def __repr__(self):
        return f"{'✅ Correct' if self.passed else '❌ Not yet'} ({self.name}): {self.message}"

    def _repr_html_(self):
        passed = ("✅", "Correct", "#1a7f37")
        mark, word, colour = passed if self.passed else ("❌", "Not yet", "#b42318")
        return (f'<p style="border-left: 4px solid {colour}; padding: 0.3em 0.8em; '
                f'white-space: normal">{mark} <strong style="color: {colour}">{word}</strong> '
                f"({html.escape(self.name)}): {html.escape(self.message)}</p>")


def exercise(name):
    """Register the decorated function as the check for exercise `name`."""

    def register(checker):
        _CHECKS[name] = checker
        return checker

    return register


def _load_all():
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def available():
    """Names of all exercises that have a check."""
    _load_all()
    return sorted(_CHECKS)


def check(name, answer):
    """Check a learner's `answer` (a function or a value) for exercise `name`.

    Each answer checked is recorded for this kernel (see `attempts` and `progress`),
    except an empty one and a function that still raises NotImplementedError (the stub
    of a student copy): those are not tries."""
    _require_exercise(name)
    if answer is None or (isinstance(answer, (str, dict, tuple, list)) and not answer):
        return Verdict(name, False, "no answer yet: fill in the cell above, run it, then run "
                                    "this check again.")
    try:
        message = _CHECKS[name](answer)
    except Wrong as wrong:
        verdict = Verdict(name, False, str(wrong))
        if _raised_by_a_stub(wrong):
            return verdict
    except Exception as error:  # an answer of a form no check foresaw
        verdict = Verdict(
            name, False, f"the check could not use your answer ({type(error).__name__}: {error})."
        )
    else:
        verdict = Verdict(name, True, message)
    _record(verdict)
    return verdict


def _require_exercise(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'ch1.shapes', got {type(name).__name__}")
    if name not in _CHECKS:
        _load_all()
    if name not in _CHECKS:
        raise ValueError(f"name {name!r} is not an exercise; known: {', '.join(available())}")


# --- what this kernel has tried: attempts and progress ----------------------------------

_RECORDS = {}  # exercise name -> _Record, for the answers checked in this kernel


@dataclass
class _Record:
    wrong: int = 0
    passed: bool = False


def _raised_by_a_stub(wrong):
    """Whether `wrong` came from a learner's function raising NotImplementedError (`call`
    turns it into Wrong, and a check may rephrase that; the chain of contexts keeps it)."""
    error = wrong
    while error is not None:
        if isinstance(error, NotImplementedError):
            return True
        error = error.__context__
    return False


def _record(verdict):
    record = _RECORDS.setdefault(verdict.name, _Record())
    record.passed = record.passed or verdict.passed
    record.wrong += not verdict.passed


def attempts(name):
    """How many wrong answers to exercise `name` were checked so far in this kernel.

    Empty answers do not count. Inside a check, the answer being checked is not counted
    yet, so a check can hint on a first wrong try (`attempts(name) == 0`) and reveal
    later."""
    _require_exercise(name)
    record = _RECORDS.get(name)
    return record.wrong if record else 0


@dataclass(frozen=True)
class ExerciseProgress:
    """One exercise's line in `progress`: passed in this kernel, and wrong tries so far."""

    name: str
    passed: bool
    wrong: int

    def __str__(self):
        if self.passed:
            return f"✅ {self.name}: passed"
        if self.wrong:
            tries = "try" if self.wrong == 1 else "tries"
            return f"❌ {self.name}: not yet ({self.wrong} wrong {tries})"
        return f"⬜ {self.name}: not tried yet"


@dataclass(frozen=True)
class Progress:
    """Where a learner stands in one chapter, in this kernel: one line per exercise."""

    chapter: str
    exercises: tuple

    @property
    def passed(self):
        return sum(e.passed for e in self.exercises)

    def _title(self):
        return (f"Chapter {self.chapter.removeprefix('ch')}: {self.passed} of "
                f"{len(self.exercises)} exercises passed in this session")

    def __str__(self):
        return "\n".join([self._title(), *(f"  {e}" for e in self.exercises)])

    __repr__ = __str__

    def _repr_html_(self):
        items = "".join(f"<li>{html.escape(str(e))}</li>" for e in self.exercises)
        return (f"<p><strong>{html.escape(self._title())}</strong></p>"
                f'<ul style="list-style: none; padding-left: 0.5em">{items}</ul>')


def progress(chapter):
    """The exercises of `chapter` ("ch3" or 3), in the chapter's order, with which of them
    passed in this kernel and how many wrong tries the others had."""
    if isinstance(chapter, bool) or not isinstance(chapter, (str, int)):
        raise TypeError(f"chapter must be a str such as 'ch3' or an int such as 3, "
                        f"got {type(chapter).__name__}")
    chapter = f"ch{chapter}" if isinstance(chapter, int) else chapter
    _load_all()
    names = [name for name in _CHECKS if name.split(".")[0] == chapter]
    if not names:
        chapters = sorted({name.split(".")[0] for name in _CHECKS}, key=lambda c: (len(c), c))
        raise ValueError(f"chapter {chapter!r} has no exercises; chapters with exercises: "
                         f"{', '.join(chapters)}")
    return Progress(chapter, tuple(
        ExerciseProgress(name, record.passed, record.wrong)
        for name, record in ((name, _RECORDS.get(name, _Record())) for name in names)))


# --- helpers for writing checks ------------------------------------------------------


def call(fn, *args, called_with, hint=None):
    """Call the learner's function; turn anything it raises into feedback.

    `hint`: a sentence added to that feedback, or a function of the exception that
    returns one (or None when it has nothing to add).
    """
    if not callable(fn):
        raise Wrong(f"expected a function, got {type(fn).__name__}: pass the function itself, "
                    "without calling it.")
    try:
        return fn(*args)
    except NotImplementedError:
        raise Wrong("your function still raises NotImplementedError: "
                    "replace that line with your code.") from None
    except Exception as error:
        extra = hint(error) if callable(hint) else hint
        raise Wrong(f"your function raised {type(error).__name__} ({error}) "
                    f"when called with {called_with}.{' ' + extra if extra else ''}") from None


def bmm_hint(error):
    """A sentence for a function that used torch.bmm on inputs that are not 3-D, or None."""
    if "must be a 3D tensor" in str(error):
        return ("torch.bmm takes 3-D tensors only: use @ (torch.matmul), which takes any "
                "number of batch dimensions.")
    return None


def _unwrapped(fn):
    """`fn` without its functools.partial, bound-method or functools.wraps wrappers."""
    for _ in range(16):
        inner = (fn.func if isinstance(fn, functools.partial)
                 else getattr(fn, "__func__", None) or getattr(fn, "__wrapped__", None))
        if inner is None:
            break
        fn = inner
    return fn


def _attribute(module, name):
    """module.name, or None where it has none (or a lazy import of it fails or warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return getattr(module, name, None)
        except Exception:
            return None


def _reached_by_name(fn):
    """What the code of `fn` names directly: its globals and closure, and the attributes
    of those modules that it names too (`torch.softmax`, `attnlib.multihead.merge_heads`)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return []
    names, codes = set(), [code]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    reached = [getattr(fn, "__globals__", {}).get(name) for name in names]
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            reached.append(cell.cell_contents)
        except ValueError:  # a cell not filled yet
            pass
    modules = [obj for obj in reached if isinstance(obj, types.ModuleType)]
    for _ in range(3):  # attnlib.multihead.merge_heads is two steps from attnlib
        found = [_attribute(module, name) for module in modules for name in names]
        reached += found
        modules = [obj for obj in found if isinstance(obj, types.ModuleType)]
    return reached


def _library_name(fn):
    module = getattr(fn, "__module__", None) or ""
    owner = "attnlib" if module.startswith("attnlib") else "PyTorch"
    return f"{owner}'s own {fn.__name__}"


def refuse_library(fn, library_fns, write):
    """Raise Wrong when the learner's `fn` is one of `library_fns` (itself, or wrapped by
    functools.partial, a bound method or functools.wraps) or calls one of them by name,
    where the exercise asks them to write it; `write` says how ("with transpose and
    reshape")."""
    own = _unwrapped(fn)
    for library_fn in library_fns:
        if own is library_fn:
            raise Wrong(f"you passed {_library_name(library_fn)}: write your own, {write}.")
    reached = _reached_by_name(own)
    for library_fn in library_fns:
        if any(obj is library_fn for obj in reached):
            raise Wrong(f"your function calls {_library_name(library_fn)}: the exercise asks "
                        f"you to write it yourself, {write}.")


# --- predictions: a hint first, the answer only after a few wrong tries -----------------

#: Wrong tries at a prediction after which its check gives the answer.
REVEAL_AFTER = 2

def wrong_prediction(name, hint, answer):
    """Raise Wrong for a wrong prediction at exercise `name`: `hint` (a sentence that does
    not give the answer away) until REVEAL_AFTER wrong tries (`attempts`), then `hint` and
    `answer`."""
    reveal = attempts(name) >= REVEAL_AFTER
    raise Wrong(f"{hint}; the answer: {answer}." if reveal else f"{hint}.")


# --- answers: their form, their numbers ------------------------------------------------


def require_keys(answer, keys, example):
    """Raise Wrong unless `answer` is a dict holding every one of `keys`; `example` shows
    the expected form in the feedback."""
    if not isinstance(answer, dict):
        raise Wrong(f"answer with a dict such as {example}, got {type(answer).__name__}.")
    missing = [key for key in keys if key not in answer]
    if missing:
        raise Wrong(f"the dict needs the keys {', '.join(map(repr, keys))}; missing "
                    f"{', '.join(map(repr, missing))}.")


def require_parts(got, names):
    """Raise Wrong unless the learner returned a tuple or list of len(names) parts, named
    `names` in the feedback ("(Q, K, V)"); return them as a tuple."""
    if not isinstance(got, (tuple, list)) or len(got) != len(names):
        what = f"a {type(got).__name__} of {len(got)}" if isinstance(got, (tuple, list)) \
            else type(got).__name__
        count = {2: "two", 3: "three"}.get(len(names), len(names))
        raise Wrong(f"return the {count} values ({', '.join(names)}), got {what}.")
    return tuple(got)


_NAN_SOURCES = "NaN comes from 0 / 0, inf - inf (as in exp(-inf - (-inf))) or inf * 0"


def number(value, what):
    """`value` as a float if it is a real number (a 0-d tensor or array too, not a bool),
    not NaN; else raise Wrong naming `what`."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        got = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong(f"{what} should be a number, got {value!r}.") from None
    if math.isnan(got):
        raise Wrong(f"{what} is NaN, not a number: {_NAN_SOURCES}.")
    return got


def whole_number(value, what):
    """`value` as an int if it is a whole number (int, integral float, 0-d tensor); else
    raise Wrong naming `what`."""
    got = number(value, what)
    if not got.is_integer():
        raise Wrong(f"{what} should be a whole number, got {value!r}.")
    return int(got)


def number_text(x):
    """A learner's number as they gave it: every digit it has, no trailing ".0"."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def texts_apart(a, b, digits=4):
    """Two numbers as text, with `digits` significant digits or as many more as it takes
    for their difference to show: 1000.69 and 1000 print as "1000.69" and "1000", not
    "1001" and "1000"."""
    a, b = float(a), float(b)
    if math.isfinite(a) and math.isfinite(b) and a != b:
        magnitude = math.floor(math.log10(max(abs(a), abs(b))))
        digits = max(digits, magnitude - math.floor(math.log10(abs(a - b))) + 2)
    digits = min(digits, 17)
    return f"{a:.{digits}g}", f"{b:.{digits}g}"


def float_tolerance(dtype, magnitude=1.0, ulps=8):
    """What a right computation in `dtype` may be off by, relative to its result, when its
    inputs are as large as `magnitude`: `ulps` units in the last place of magnitude
    (float32: exp(x - lse) for logits of 1000 is off by about 3e-5, float32's eps is 1.2e-7
    per unit of magnitude)."""
    return ulps * torch.finfo(dtype).eps * max(1.0, magnitude)


def shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


# --- tensors ---------------------------------------------------------------------------


def matches(got, known, atol=1e-5):
    """Whether the learner's tensor equals a known (right or wrong) answer: same shape,
    values within atol, NaN where it has NaN."""
    return (isinstance(got, torch.Tensor) and got.shape == known.shape
            and torch.allclose(got.detach().double().cpu(), known.detach().double().cpu(),
                               atol=atol, rtol=0, equal_nan=True))


def mistake_named(got, mistakes, expected=None, atol=1e-5):
    """The sentence of the first (wrong answer, sentence) of `mistakes` that `got` matches,
    or None; a mistake that gives the `expected` answer on these inputs is passed over."""
    return next((sentence for wrong, sentence in mistakes if matches(got, wrong, atol)
                 and (expected is None or not matches(wrong, expected, atol))), None)


def scale_mistakes(attend, d_k, d_v):
    """(attend(scale), sentence) for the usual wrong scales of attention scores, where
    attend(scale) is the right attention with that scale in place of 1/sqrt(d_k)."""
    mistakes = [
        (attend(1.0), "is attention without the division by sqrt(d_k): scale the scores by "
                      "1/sqrt(d_k)"),
        (attend(1 / d_k), "divides the scores by d_k: divide by sqrt(d_k) instead"),
        (attend(math.sqrt(d_k)), "multiplies the scores by sqrt(d_k): divide by it instead"),
    ]
    if d_v != d_k:
        mistakes.append((attend(d_v**-0.5), f"divides the scores by sqrt(d_v) = sqrt({d_v}), "
                         f"the width of the values: divide by sqrt(d_k) = sqrt({d_k}), the "
                         "width of q and k"))
    return mistakes


def same_tensor(got, expected, what, atol=1e-5, rtol=1e-5, hint=None):
    """Raise Wrong unless `got` is a tensor of `expected`'s shape and values; `hint` is
    added when the shape is right but the values are not."""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{what} should be a torch.Tensor, but got {type(got).__name__}.")
    if got.shape != expected.shape:
        transposed = ""
        if expected.dim() >= 2 and got.shape == expected.mT.shape:
            transposed = ": it looks transposed"
        raise Wrong(f"{what} should have shape {shape_text(expected.shape)}, "
                    f"but yours has shape {shape_text(got.shape)}{transposed}.")
    got64, expected64 = got.detach().double().cpu(), expected.detach().double().cpu()
    close = torch.isclose(got64, expected64, atol=atol, rtol=rtol, equal_nan=True)
    if not bool(close.all()):
        where = tuple(int(i) for i in torch.nonzero(~close)[0])
        right, yours = texts_apart(expected64[where], got64[where])
        if math.isnan(got64[where]):
            problem = f"has NaN at index {where}, where {right} was expected ({_NAN_SOURCES})"
        else:
            problem = (f"has the right shape but not the right values: at index {where} "
                       f"expected {right}, got {yours}")
        raise Wrong(f"{what} {problem}{': ' + hint if hint else ''}.")
