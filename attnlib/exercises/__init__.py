"""Exercise checks: `check("ch1.project_qkv", my_qkv)` returns a one-sentence verdict.

Each chapter's checks live in `attnlib/exercises/ch<N>.py` and register themselves with
`@exercise("ch<N>.<name>")`.  A check calls the learner's function or reads the
learner's value, compares it with the library's own answer, and either returns a
sentence of praise or raises `Wrong` with a sentence saying what was expected and what
came back.  Whatever the learner's code does, `check` returns a `Verdict`; it never
lets a traceback reach the learner.
"""

import html
import importlib
import pkgutil
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
    """Check a learner's `answer` (a function or a value) for exercise `name`."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'ch1.shapes', got {type(name).__name__}")
    if name not in _CHECKS:
        _load_all()
    if name not in _CHECKS:
        raise ValueError(f"name {name!r} is not an exercise; known: {', '.join(available())}")
    if answer is None or (isinstance(answer, (str, dict, tuple, list)) and not answer):
        return Verdict(name, False, "no answer yet: fill in the cell above, run it, then run "
                                    "this check again.")
    try:
        message = _CHECKS[name](answer)
    except Wrong as wrong:
        return Verdict(name, False, str(wrong))
    except Exception as error:  # an answer of a form no check foresaw
        return Verdict(
            name, False, f"the check could not use your answer ({type(error).__name__}: {error})."
        )
    return Verdict(name, True, message)


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


def number(value, what):
    """`value` as a float if it is a real number (a 0-d tensor or array too, not a bool);
    else raise Wrong naming `what`."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong(f"{what} should be a number, got {value!r}.") from None


def whole_number(value, what):
    """`value` as an int if it is a whole number (int, integral float, 0-d tensor); else
    raise Wrong naming `what`."""
    got = number(value, what)
    if not got.is_integer():
        raise Wrong(f"{what} should be a whole number, got {value!r}.")
    return int(got)


def shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def matches(got, known, atol=1e-5):
    """Whether the learner's tensor equals a known (right or wrong) answer: same shape,
    values within atol, NaN where it has NaN."""
    return (isinstance(got, torch.Tensor) and got.shape == known.shape
            and torch.allclose(got.detach().double().cpu(), known.detach().double().cpu(),
                               atol=atol, rtol=0, equal_nan=True))


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
        raise Wrong(f"{what} has the right shape but not the right values: at index {where} "
                    f"expected {expected64[where]:.6g}, got {got64[where]:.6g}"
                    f"{': ' + hint if hint else ''}.")
