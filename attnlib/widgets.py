"""The course's widget pattern: controls, a figure and a line of text that follow them.

    explore(render, d_k=IntSlider(...), seed=IntSlider(...))

calls `render(d_k=..., seed=...)` once and shows the result as ordinary cell outputs,
so the static website shows a meaningful figure for the default settings.  When a
kernel runs, every change of a control calls `render` again and replaces those outputs
in place (IPython display handles).  Nothing here depends on the ipywidgets version:
it works the same on ipywidgets 7.7 (Colab) and 8.
"""

import ipywidgets
import matplotlib.figure
from IPython.display import Image, Pretty, display

from attnlib.plotting import figure_png


def _split(result):
    """render may return a Figure, a str, or (Figure, str)."""
    if isinstance(result, tuple) and len(result) == 2:
        return result
    if isinstance(result, matplotlib.figure.Figure):
        return result, None
    if isinstance(result, str):
        return None, result
    raise TypeError(
        f"render must return a matplotlib Figure, a str or (Figure, str), "
        f"got {type(result).__name__}"
    )


class Explorer:
    """Controls plus the outputs of `render(**values)`, redrawn when a control changes.

    Build it with `explore`.  `png` and `text` hold the latest drawing; `set(**values)`
    moves controls from code (and so redraws), which is also how the tests drive it.
    """

    def __init__(self, render, controls):
        if not controls:
            raise ValueError("explore needs at least one control, got none")
        for name, control in controls.items():
            if not isinstance(control, ipywidgets.ValueWidget):
                raise TypeError(
                    f"control {name!r} must be an ipywidgets value widget "
                    f"(IntSlider, Dropdown, Text, ...), got {type(control).__name__}"
                )
            if not control.description:
                control.description = name
            if hasattr(control, "continuous_update"):
                control.continuous_update = False  # redraw on release, not on every pixel
        self.render = render
        self.controls = controls
        self._handles = None
        self.png, self.text = self._draw()
        for control in controls.values():
            control.observe(self._redraw, names="value")

    def values(self):
        return {name: control.value for name, control in self.controls.items()}

    def set(self, **values):
        for name, value in values.items():
            if name not in self.controls:
                raise ValueError(f"no control named {name!r}; controls: {list(self.controls)}")
            self.controls[name].value = value

    def _draw(self):
        fig, text = _split(self.render(**self.values()))
        return (figure_png(fig) if fig is not None else None), text

    def _redraw(self, change=None):
        try:
            png, text = self._draw()
        except (ValueError, TypeError) as error:  # a setting the render cannot draw
            self.text = f"Cannot draw this setting: {error}"
        else:
            self.png, self.text = png, text
        if self._handles is not None:
            image_handle, text_handle = self._handles
            if self.png is not None and image_handle is not None:
                image_handle.update(Image(data=self.png))
            text_handle.update(Pretty(self.text or ""))

    def _ipython_display_(self):
        box = ipywidgets.HBox(
            list(self.controls.values()), layout=ipywidgets.Layout(flex_flow="row wrap")
        )
        display(box)
        text_handle = display(Pretty(self.text or ""), display_id=True)
        image_handle = display(Image(data=self.png), display_id=True) if self.png else None
        self._handles = (image_handle, text_handle)


def explore(render, **controls):
    """Show `render(**values)` for the controls' current values, and redraw on change.

    `render(**values)` returns a matplotlib Figure, a str, or (Figure, str).  When a
    change makes render raise ValueError or TypeError, the text says why and the last
    good figure stays.
    """
    return Explorer(render, controls)
