import base64
import configparser
import io
import json
import re
from pathlib import Path

import ipywidgets
import matplotlib.pyplot as plt
import numpy
import PIL.Image
import pytest

from attnlib import widgets
from attnlib.plotting import figure_png

SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")


def make_render(calls):
    def render(n, label):
        if n > 5:
            raise ValueError(f"n must be at most 5, got {n}")
        calls.append((n, label))
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(range(n), range(n))
        ax.set_title(f"$n$ = {n} bars")
        return fig, f"n = {n}, label = {label}"

    return render


def static_data(page):
    """The JSON that the static explorer switches with."""
    payload = re.search(r'class="attnlib-explorer-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(payload.replace("<\\/", "</"))


def png_from(data_uri):
    return PIL.Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1])))


def test_explorer_draws_defaults_then_follows_the_controls():
    calls = []
    slider = ipywidgets.IntSlider(value=2, min=1, max=10)
    explorer = widgets.explore(make_render(calls), n=slider,
                               label=ipywidgets.Dropdown(options=["a", "b"]))
    assert calls == [(2, "a")] and explorer.text == "n = 2, label = a"
    assert explorer.png.startswith(b"\x89PNG")
    first_png = explorer.png
    slider.value = 4  # as a reader moving the slider
    assert calls[-1] == (4, "a") and explorer.text == "n = 4, label = a"
    assert explorer.png != first_png
    explorer.set(label="b")
    assert calls[-1] == (4, "b")
    assert slider.description == "n" and slider.continuous_update is False


def test_explorer_explains_a_setting_it_cannot_draw_and_keeps_the_figure():
    calls = []
    explorer = widgets.explore(make_render(calls), n=ipywidgets.IntSlider(value=2, max=10),
                               label=ipywidgets.Text(value="x"))
    png = explorer.png
    explorer.set(n=7)
    assert explorer.text == "Cannot draw this setting: n must be at most 5, got 7"
    assert explorer.png == png and len(calls) == 1


def test_live_view_holds_the_controls_and_follows_them():
    explorer = widgets.explore(make_render([]), n=ipywidgets.IntSlider(value=1, max=10),
                               label=ipywidgets.Text(value="x"))
    row, text, image = explorer.view.children
    assert list(row.children) == list(explorer.controls.values())
    assert "n = 1, label = x" in text.value and image.value == explorer.png
    explorer.set(n=3)
    assert "n = 3, label = x" in text.value
    assert image.value == explorer.png == figure_png(make_render([])(3, "x")[0])


def test_one_output_carries_the_live_widget_and_the_static_copy():
    explorer = widgets.explore(make_render([]), n=ipywidgets.IntSlider(value=2, max=5),
                               label=ipywidgets.Dropdown(options=["a", "b"]))
    bundle = explorer._repr_mimebundle_()
    assert bundle[widgets.WIDGET_VIEW]["model_id"] == explorer.view.model_id
    assert bundle["text/plain"] == "n = 2, label = a"
    page = bundle["text/html"]
    shown = re.search(r'<img class="attnlib-explorer-figure" src="([^"]+)" alt="([^"]+)"', page)
    data = static_data(page)
    first = data["settings"]["0,0"]  # n has one value (2), label's index 0 is "a"
    assert shown.group(1) == data["images"][first[0]]
    assert shown.group(2) == "Figure: n = 2 bars"
    assert '<pre class="attnlib-explorer-text">n = 2, label = a</pre>' in page
    assert "n: 2; label: a, b. Run the notebook" in page


def test_displaying_it_sends_that_one_bundle(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", lambda obj, raw=False: shown.append((obj, raw)))
    explorer = widgets.explore(make_render([]), n=ipywidgets.IntSlider(value=2, max=5),
                               label=ipywidgets.Text(value="x"))
    explorer._ipython_display_()
    [(bundle, raw)] = shown
    assert raw and bundle == explorer._repr_mimebundle_()


def test_precomputed_grid_is_what_render_draws_at_each_setting():
    calls = []
    explorer = widgets.explore(
        make_render(calls),
        n=(ipywidgets.IntSlider(value=2, max=10), [1, 2, 7]),  # (control, values)
        label=ipywidgets.Dropdown(options=[("first", "a"), ("second", "b")]))
    assert explorer.grid == {"n": (1, 2, 7), "label": ("a", "b")}
    grid = explorer.precomputed()
    assert list(grid["settings"]) == [f"{i},{j}" for i in range(3) for j in range(2)]
    for i, n in enumerate([1, 2, 7]):
        for j, label in enumerate("ab"):
            image, text = grid["settings"][f"{i},{j}"]
            if n > 5:  # the render refuses: the text says why, the figure stays
                assert image is None
                assert grid["texts"][text] == "Cannot draw this setting: n must be at most 5, got 7"
                continue
            fig, expected = make_render([])(n, label)
            png = widgets._static_png(fig)
            assert grid["images"][image][0] == png and grid["texts"][text] == expected
    assert len(grid["images"]) == 2  # the label only changes the text: one figure per n


def test_static_controls_mirror_the_live_ones():
    explorer = widgets.explore(
        lambda d, kind, on, word: f"{d} {kind} {on} {word}",
        d=widgets.precompute(ipywidgets.FloatLogSlider(value=1.0, min=-1, max=1), [0.1, 1.0]),
        kind=ipywidgets.Dropdown(options=[("one", 1), ("two", 2)], value=2),
        on=ipywidgets.Checkbox(value=True, description="switched on"),
        word=ipywidgets.Text(value="hi"))
    page = explorer.static_html()
    assert re.search(r'<input type="range" data-control="0" min="0" max="1" step="1" '
                     r'value="1"> <output>1</output>', page)
    assert re.search(r'<select data-control="1"><option value="0">one</option>'
                     r'<option value="1" selected>two</option></select>', page)
    assert '<input type="checkbox" data-control="2" checked> switched on' in page
    assert '<select data-control="3" disabled><option value="0" selected>hi</option>' in page
    assert [c["kind"] for c in static_data(page)["controls"]] == [
        "range", "select", "checkbox", "select"]
    assert '<img class="attnlib-explorer-figure"' not in page  # text only: no figure


def test_the_note_says_when_every_setting_is_on_the_page():
    step = ipywidgets.IntSlider(value=2, min=1, max=3, description="step")
    every = widgets.explore(lambda step, on: "", step=(step, [1, 2, 3]),
                            on=ipywidgets.Checkbox(description="on"))
    assert every.note() == ("On this page the figure is precomputed for every setting: "
                            "step: 1, 2, 3; on: False, True.")
    some = widgets.explore(lambda step: "", step=(ipywidgets.IntSlider(value=2, max=9), [2, 5]))
    assert some.note() == ("On this page the figure is precomputed for step: 2, 5. Run the "
                           "notebook (Colab, Binder or Jupyter) to explore every other setting.")
    text = widgets.explore(lambda word: "", word=ipywidgets.Text(value="hi"))
    assert "explore every other setting" in text.note()


def test_default_values_and_their_declaration():
    dropdown = ipywidgets.Dropdown(options=[("x", 1), ("y", 2)])
    assert widgets.default_values(dropdown) == (1, 2)
    assert widgets.default_values(ipywidgets.Checkbox(value=True)) == (False, True)
    assert widgets.default_values(ipywidgets.IntSlider(value=3)) == (3,)
    assert widgets.default_values(ipywidgets.SelectionSlider(options=[4, 8])) == (4, 8)
    slider = ipywidgets.IntSlider(value=3, max=8, description="N")
    assert widgets.precompute(slider, [3, 8]) == (slider, (3, 8))


def test_precompute_rejects_values_the_control_cannot_take():
    slider = ipywidgets.IntSlider(value=3, min=1, max=8, description="N")
    with pytest.raises(ValueError, match=r"'N' ranges over \[1, 8\], got 9"):
        widgets.precompute(slider, [3, 9])
    with pytest.raises(ValueError, match=r"must include its current value 3, got \[1, 8\]"):
        widgets.precompute(slider, [1, 8])
    with pytest.raises(ValueError, match="at least one value for 'N'"):
        widgets.precompute(slider, [])
    log = ipywidgets.FloatLogSlider(value=1.0, min=-1, max=1, description="T")
    with pytest.raises(ValueError, match=r"'T' ranges over \[0.1, 10\], got 20"):
        widgets.precompute(log, [1.0, 20])
    with pytest.raises(ValueError, match=r"'mask' has no option 'diagonal'; options: \['a'"):
        widgets.precompute(ipywidgets.Dropdown(options=["a", "b"], description="mask"),
                           ["a", "diagonal"])
    with pytest.raises(TypeError, match="'on' takes True or False, got 1"):
        widgets.precompute(ipywidgets.Checkbox(value=True, description="on"), [True, 1])


def test_explore_checks_the_declared_values_of_each_control():
    with pytest.raises(ValueError, match=r"'n' ranges over \[0, 100\], got 200"):
        widgets.explore(make_render([]), n=(ipywidgets.IntSlider(value=2), [2, 200]),
                        label=ipywidgets.Text())


def test_too_large_a_grid_is_refused_with_its_size():
    with pytest.raises(ValueError, match=r"precompute 50 settings \(25 a x 2 b\), more than 48"):
        widgets.explore(lambda a, b: "",
                        a=ipywidgets.Dropdown(options=range(25)), b=ipywidgets.Checkbox())


def test_precomputed_figures_fit_the_text_column():
    def wide(n):
        fig, ax = plt.subplots(figsize=(13, 5))
        ax.plot(range(n))
        return fig

    page = widgets.explore(wide, n=widgets.precompute(ipywidgets.IntSlider(value=2), [2, 3]))
    images = static_data(page.static_html())["images"]
    assert len(images) == 2
    assert all(png_from(uri).width == widgets.STATIC_WIDTH_PX for uri in images)
    narrow = widgets.explore(make_render([]), n=ipywidgets.IntSlider(value=2),
                             label=ipywidgets.Text(value="x"))
    image = png_from(static_data(narrow.static_html())["images"][0])
    assert image.size == (400, 300) and image.mode == "P"  # 4 x 3 in at 100 dpi; a palette
    live = PIL.Image.open(io.BytesIO(narrow.png)).convert("RGB")
    difference = numpy.abs(numpy.asarray(live, float) - numpy.asarray(image.convert("RGB"), float))
    assert difference.mean() < 1  # out of 255: the palette changes nothing one can see


def test_nbval_ignores_the_precomputed_pngs_but_compares_the_rest():
    """Stored PNG bytes differ between matplotlib/FreeType builds: the sanitizer that
    strict nbval applies must remove them, and leave the texts to compare."""
    config = configparser.ConfigParser()
    config.read(SANITIZE)
    explorer = widgets.explore(make_render([]), n=widgets.precompute(
        ipywidgets.IntSlider(value=2), [1, 2]), label=ipywidgets.Text(value="x"))
    page = explorer.static_html()
    for section in config.sections():
        page = re.sub(config[section]["regex"], config[section]["replace"], page)
    assert "iVBOR" not in page  # base64 of a PNG signature
    assert "n = 1, label = x" in page and "n = 2, label = x" in page


def test_figure_alt_reads_titles_and_labels_without_tex():
    fig, (left, right) = plt.subplots(1, 2)
    fig.suptitle("Hidden keys get weight 0")
    left.set_title(r"$QK^\top$ with $d_k$ = 2")
    left.set_xlabel("key")
    right.set_ylabel(r"$\sqrt{d_k}$")
    assert widgets.figure_alt(fig) == (
        "Figure: Hidden keys get weight 0; QKᵀ with d_k = 2 (x: key); (y: √d_k)")
    plt.close(fig)


def test_explore_rejects_what_is_not_a_control():
    with pytest.raises(TypeError, match=r"control 'n' must be an ipywidgets value widget .* int"):
        widgets.explore(make_render([]), n=3)
    with pytest.raises(ValueError, match="at least one control"):
        widgets.explore(make_render([]))
    explorer = widgets.explore(make_render([]), n=ipywidgets.IntSlider(value=1),
                               label=ipywidgets.Text())
    with pytest.raises(ValueError, match=r"no control named 'm'; controls: \['n', 'label'\]"):
        explorer.set(m=1)


def test_render_must_return_a_figure_or_text():
    with pytest.raises(TypeError, match="render must return .* got int"):
        widgets.explore(lambda n: 3, n=ipywidgets.IntSlider())
    text_only = widgets.explore(lambda n: f"n is {n}", n=ipywidgets.IntSlider(value=4))
    assert text_only.text == "n is 4" and text_only.png is None
    assert len(text_only.view.children) == 2  # controls and text, no image
