"""The course's widget pattern: controls, a figure and a line of text that follow them.

    explore(render,
            d_k=(IntSlider(value=64, min=1, max=256), [4, 16, 64, 256]),
            scaled=Checkbox(value=True))

Where a kernel runs (Jupyter, Colab, Binder) the controls are live: every change calls
`render(d_k=..., scaled=...)` again and shows its figure and text.  The website has no
kernel, so when the notebook runs `explore` also renders a small grid of settings, and
the same output carries a static copy of the explorer: the same kinds of controls,
switching between the precomputed figures with a few lines of JavaScript.  One output,
two views: Jupyter and Colab show the live widget (its mime type ranks first there); the
book's build is told to prefer the static HTML (`nb_mime_priority_overrides`).

The static copy holds every option of an option control (Dropdown, SelectionSlider, ...),
both states of a Checkbox, and only the current value of any other control (a slider, a
text box) unless the values are named next to the control: `(control, values)`, checked
by `precompute`.  Nothing here depends on the ipywidgets version: it works the same on
ipywidgets 7.7 (Colab) and 8.
"""

import base64
import html
import io
import itertools
import json
import math
import re
from typing import NamedTuple

import ipywidgets
import matplotlib.figure
import matplotlib.pyplot as plt
import numpy
import PIL.Image
from IPython.display import display
from matplotlib.backends.backend_agg import FigureCanvasAgg

from attnlib.plotting import figure_png

#: The most settings one explorer may precompute (each is one figure in the notebook).
MAX_SETTINGS = 48
#: Precomputed figures are drawn at most this wide (the width of the book's text column),
#: so that each page stays light.
STATIC_WIDTH_PX = 800
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_ROW_STYLE = "display: flex; flex-wrap: wrap; gap: 0.4em 1.5em; align-items: center"
# TeX commands of figure titles, as text for alt attributes.
_TEX_AS_TEXT = {r"^\top": "ᵀ", r"\top": "ᵀ", r"\sqrt": "√", r"\cdot": "·", r"\times": "×"}


def _kind(control):
    """How the website shows a control: "select" (options, text), "range" (a slider) or
    "checkbox"."""
    if isinstance(control, ipywidgets.SelectionSlider):
        return "range"
    if hasattr(control, "_options_values"):
        return "select"
    if isinstance(control.value, bool):
        return "checkbox"
    return "range" if hasattr(control, "max") else "select"


class Precomputed(NamedTuple):
    """A control and the values of it that the website precomputes (see `precompute`)."""

    control: ipywidgets.ValueWidget
    values: tuple


def precompute(control, values):
    """Check which `values` of `control` the website precomputes; returns them together.

    `explore(render, n=(slider, [4, 8, 16]))` calls it for each `(control, values)`.
    The control's current value must be one of them: it is what the page shows first.
    A slider's values must lie within its range, an option control's among its options.
    """
    values = tuple(values)
    name = control.description or type(control).__name__
    if not values:
        raise ValueError(f"precompute needs at least one value for {name!r}, got none")
    for value in values:
        _check_value(name, control, value)
    if control.value not in values:
        raise ValueError(f"the precomputed values of {name!r} must include its current "
                         f"value {control.value!r}, got {list(values)}")
    return Precomputed(control, values)


def _check_value(name, control, value):
    if hasattr(control, "_options_values"):
        if value not in control._options_values:
            raise ValueError(f"{name!r} has no option {value!r}; options: "
                             f"{list(control._options_values)}")
    elif isinstance(control.value, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{name!r} takes True or False, got {value!r}")
    elif hasattr(control, "max"):
        low, high = control.min, control.max
        if isinstance(control, ipywidgets.FloatLogSlider):  # its min and max are exponents
            low, high = control.base**low, control.base**high
        if not low <= value <= high:
            raise ValueError(f"{name!r} ranges over [{low:g}, {high:g}], got {value!r}")


def default_values(control):
    """The values the website precomputes when `precompute` names none: every option of
    an option control, False and True for a checkbox, else the current value only."""
    if hasattr(control, "_options_values"):
        return tuple(control._options_values)
    if isinstance(control.value, bool):
        return (False, True)
    return (control.value,)


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


def _pre(text):
    return f"<pre>{html.escape(text or '')}</pre>"


class Explorer:
    """Controls plus the outputs of `render(**values)`, redrawn when a control changes.

    Build it with `explore`.  `png` and `text` hold the latest drawing and `view` is the
    live widget (controls, text, figure); `set(**values)` moves controls from code (and
    so redraws), which is also how the tests drive it.  `precomputed()` renders the grid
    of settings that the website switches between, and `static_html()` writes that copy.
    """

    def __init__(self, render, controls):
        if not controls:
            raise ValueError("explore needs at least one control, got none")
        self.render = render
        self.controls, self.grid = {}, {}
        for name, given in controls.items():
            control, values = given if isinstance(given, tuple) and len(given) == 2 else (
                given, None)
            if not isinstance(control, ipywidgets.ValueWidget):
                raise TypeError(
                    f"control {name!r} must be an ipywidgets value widget (IntSlider, "
                    f"Dropdown, Text, ...) or (widget, values), got {type(given).__name__}"
                )
            if not control.description:
                control.description = name
            if hasattr(control, "continuous_update"):
                control.continuous_update = False  # redraw on release, not on every pixel
            self.controls[name] = control
            self.grid[name] = (default_values(control) if values is None
                               else precompute(control, values).values)
        settings = math.prod(len(values) for values in self.grid.values())
        if settings > MAX_SETTINGS:
            sizes = " x ".join(f"{len(v)} {name}" for name, v in self.grid.items())
            raise ValueError(f"the website would precompute {settings} settings ({sizes}), "
                             f"more than {MAX_SETTINGS}: precompute fewer values")
        self.png, self.text = self._draw()
        self._text_view = ipywidgets.HTML(_pre(self.text))
        self._image_view = ipywidgets.Image(value=self.png or b"", format="png")
        row = ipywidgets.HBox(list(self.controls.values()),
                              layout=ipywidgets.Layout(flex_flow="row wrap"))
        self.view = ipywidgets.VBox(
            [row, self._text_view] + ([self._image_view] if self.png is not None else []))
        for control in self.controls.values():
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
        self._text_view.value = _pre(self.text)
        if self.png is not None:
            self._image_view.value = self.png

    def precomputed(self):
        """Render every setting of the grid, in the order of `itertools.product`.

        Returns {"images": [(png, alt), ...], "texts": [...], "settings": {key: [image
        index or None, text index]}}, where key joins each control's index in its grid
        values with commas; equal figures and texts are stored once.
        """
        images, texts, settings = [], [], {}
        names = list(self.grid)
        for indices in itertools.product(*(range(len(self.grid[n])) for n in names)):
            values = {n: self.grid[n][i] for n, i in zip(names, indices, strict=True)}
            try:
                fig, text = _split(self.render(**values))
            except (ValueError, TypeError) as error:
                image, text = None, f"Cannot draw this setting: {error}"
            else:
                image = (None if fig is None else
                         _index(images, (_static_png(fig), figure_alt(fig))))
            settings[",".join(map(str, indices))] = [image, _index(texts, text or "")]
        return {"images": images, "texts": texts, "settings": settings}

    def static_html(self):
        """The explorer as HTML with the precomputed figures: what the website shows."""
        grid = self.precomputed()
        current = self.values()
        start = [_position(values, current[name]) for name, values in self.grid.items()]
        image, text = grid["settings"][",".join(map(str, start))]
        data = {
            "controls": [_control_data(name, self.controls[name], values)
                         for name, values in self.grid.items()],
            "images": [_data_uri(png) for png, _ in grid["images"]],
            "alts": [alt for _, alt in grid["images"]],
            "texts": grid["texts"],
            "settings": grid["settings"],
        }
        controls = "\n".join(_control_html(i, spec, index)
                             for i, (spec, index) in enumerate(zip(data["controls"], start,
                                                                   strict=True)))
        figure = ("" if image is None else
                  f'<img class="attnlib-explorer-figure" src="{data["images"][image]}" '
                  f'alt="{html.escape(data["alts"][image])}" style="max-width: 100%">\n')
        payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
        return (
            '<div class="attnlib-explorer">\n'
            f'<div class="attnlib-explorer-controls" style="{_ROW_STYLE}">\n{controls}\n</div>\n'
            f'<pre class="attnlib-explorer-text">{html.escape(grid["texts"][text])}</pre>\n'
            f"{figure}"
            f'<p class="attnlib-explorer-note">{html.escape(self.note())}</p>\n'
            f'<script type="application/json" class="attnlib-explorer-data">{payload}</script>\n'
            f"<script>{_SWITCH_JS}</script>\n"
            "</div>"
        )

    def note(self):
        """One sentence that says which settings the page holds."""
        held = "; ".join(f"{self.controls[name].description}: "
                         + ", ".join(_label(self.controls[name], v) for v in values)
                         for name, values in self.grid.items())
        if all(set(values) == set(_all_values(self.controls[name]))
               for name, values in self.grid.items()):
            return f"On this page the figure is precomputed for every setting: {held}."
        return (f"On this page the figure is precomputed for {held}. Run the notebook "
                "(Colab, Binder or Jupyter) to explore every other setting.")

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {
            WIDGET_VIEW: {"version_major": 2, "version_minor": 0,
                          "model_id": self.view.model_id},
            "text/html": self.static_html(),
            "text/plain": self.text or "",
        }

    def _ipython_display_(self):
        # A display_data message, as ipywidgets 7 (Colab's) sends for its own widgets.
        display(self._repr_mimebundle_(), raw=True)


def explore(render, **controls):
    """Show `render(**values)` for the controls' current values, and redraw on change.

    `render(**values)` returns a matplotlib Figure, a str, or (Figure, str).  A control
    is an ipywidgets value widget, or `(widget, values)` to say which of its values the
    website precomputes (see `precompute`).  When a change makes render raise ValueError
    or TypeError, the text says why and the last good figure stays.
    """
    return Explorer(render, controls)


def figure_alt(fig):
    """Alt text from a figure's titles and axis labels, TeX markup removed."""
    parts = [fig.get_suptitle()]
    for ax in fig.get_axes():
        labels = [f"{axis}: {label}" for axis, label in (("x", ax.get_xlabel()),
                                                         ("y", ax.get_ylabel())) if label]
        if ax.get_title() or labels:
            parts.append(ax.get_title() + (f" ({', '.join(labels)})" if labels else ""))
    text = "; ".join(p.strip() for p in parts if p.strip()) or "a figure without a title"
    for tex, plain in _TEX_AS_TEXT.items():
        text = text.replace(tex, plain)
    return "Figure: " + re.sub(r"\\(?=[A-Za-z])|[${}]", "", text)


def _all_values(control):
    """Every value a control can take, when they are few (options, a checkbox, an integer
    slider); else an empty tuple."""
    if hasattr(control, "_options_values") or isinstance(control.value, bool):
        return default_values(control)
    if isinstance(control.value, int) and hasattr(control, "step"):
        return tuple(range(control.min, control.max + 1, control.step))
    return ()


def _static_png(fig):
    """PNG bytes of a precomputed figure: at most STATIC_WIDTH_PX wide and 100 dpi, in 256
    colours (a third of the bytes, and no difference to see on a plot).  Closes `fig`."""
    fig.set_dpi(min(100, STATIC_WIDTH_PX / fig.get_figwidth()))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = PIL.Image.fromarray(numpy.asarray(canvas.buffer_rgba())).convert("RGB")
    plt.close(fig)
    buffer = io.BytesIO()
    image.quantize(256, method=PIL.Image.Quantize.MEDIANCUT, dither=PIL.Image.Dither.NONE
                   ).save(buffer, format="png")
    return buffer.getvalue()


def _index(items, item):
    """The position of `item` in `items`, appending it first when it is new."""
    if item not in items:
        items.append(item)
    return items.index(item)


def _position(values, value):
    return next((i for i, v in enumerate(values) if v == value), 0)


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _label(control, value):
    if hasattr(control, "_options_values"):
        return str(control._options_labels[_position(control._options_values, value)])
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _control_data(name, control, values):
    kind = _kind(control)
    return {"name": name, "label": control.description, "kind": kind,
            "values": [v if kind == "checkbox" else _label(control, v) for v in values]}


def _control_html(i, spec, index):
    label, values = html.escape(spec["label"]), spec["values"]
    disabled = " disabled" if len(values) == 1 else ""
    if spec["kind"] == "checkbox":
        checked = " checked" if values[index] else ""
        return (f'<label><input type="checkbox" data-control="{i}"{checked}{disabled}> '
                f"{label}</label>")
    if spec["kind"] == "range":
        return (f'<label>{label} <input type="range" data-control="{i}" min="0" '
                f'max="{len(values) - 1}" step="1" value="{index}"{disabled}> '
                f"<output>{html.escape(values[index])}</output></label>")
    options = "".join(f'<option value="{j}"{" selected" if j == index else ""}>'
                      f"{html.escape(v)}</option>" for j, v in enumerate(values))
    return f'<label>{label} <select data-control="{i}"{disabled}>{options}</select></label>'


# Switches the static explorer's figure and text to the precomputed ones of the setting
# its controls show; the key is each control's index in its values, joined by commas.
_SWITCH_JS = """(function (root) {
  var data = JSON.parse(root.querySelector(".attnlib-explorer-data").textContent);
  var inputs = Array.prototype.slice.call(root.querySelectorAll("[data-control]"));
  var figure = root.querySelector(".attnlib-explorer-figure");
  var text = root.querySelector(".attnlib-explorer-text");
  function position(input) {
    var spec = data.controls[Number(input.dataset.control)];
    return spec.kind === "checkbox" ? spec.values.indexOf(input.checked) : Number(input.value);
  }
  function show() {
    var setting = data.settings[inputs.map(position).join(",")];
    inputs.forEach(function (input) {
      var output = input.parentNode.querySelector("output");
      if (output) output.textContent = data.controls[Number(input.dataset.control)]
        .values[Number(input.value)];
    });
    if (setting[0] !== null && figure) {
      figure.src = data.images[setting[0]];
      figure.alt = data.alts[setting[0]];
    }
    text.textContent = data.texts[setting[1]];
  }
  inputs.forEach(function (input) {
    input.addEventListener("input", show);
    input.addEventListener("change", show);
  });
})(document.currentScript.parentNode);"""
