"""Show the library's own source in a notebook, instead of re-typing it."""

import inspect
import textwrap


class SourceCode:
    """Source text that renders as highlighted Python in notebooks and on the website.

    Its plain-text form is the source itself, so a notebook test notices when the
    library changed and the notebook was not re-executed.
    """

    def __init__(self, code, origin):
        self.code = code
        self.origin = origin

    def __repr__(self):
        return f"# {self.origin}\n{self.code}"

    def _repr_markdown_(self):
        fence = "```"
        while fence in self.code:
            fence += "`"
        return f"{fence}python\n{self!r}\n{fence}"


def show_source(obj):
    """The source of a library function, class or module, with where it comes from.

    A Triton kernel (`triton.jit`, compiled or interpreted) shows the Python function it
    was made from.
    """
    obj = getattr(obj, "fn", obj) if not inspect.isroutine(obj) else obj
    try:
        code = inspect.getsource(obj)
        path = inspect.getsourcefile(obj)
    except (TypeError, OSError) as error:
        raise TypeError(
            f"obj must be a function, class or module defined in Python source, "
            f"got {obj!r} ({error})"
        ) from None
    module = inspect.getmodule(obj)
    name = getattr(obj, "__qualname__", None) or module.__name__
    where = module.__name__ if module is not None else path
    origin = f"{where}.{name}" if name != where else where
    return SourceCode(textwrap.dedent(code).rstrip(), origin)
