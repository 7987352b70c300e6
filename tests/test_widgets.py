import ipywidgets
import matplotlib.pyplot as plt
import pytest

from attnlib import widgets


def make_render(calls):
    def render(n, label):
        if n > 5:
            raise ValueError(f"n must be at most 5, got {n}")
        calls.append((n, label))
        fig, ax = plt.subplots()
        ax.bar(range(n), range(n))
        return fig, f"n = {n}, label = {label}"

    return render


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


def test_explorer_updates_displayed_outputs_in_place(monkeypatch):
    shown = []

    class Handle:
        def __init__(self, obj):
            self.objects = [obj]

        def update(self, obj):
            self.objects.append(obj)

    def fake_display(obj, display_id=False):
        shown.append(obj)
        return Handle(obj) if display_id else None

    monkeypatch.setattr(widgets, "display", fake_display)
    explorer = widgets.explore(make_render([]), n=ipywidgets.IntSlider(value=1, max=10),
                               label=ipywidgets.Text(value="x"))
    explorer._ipython_display_()
    box, text, image = shown
    assert isinstance(box, ipywidgets.HBox) and len(box.children) == 2
    assert text.data == "n = 1, label = x" and image.data == explorer.png
    explorer.set(n=3)
    image_handle, text_handle = explorer._handles
    assert text_handle.objects[-1].data == "n = 3, label = x"
    assert image_handle.objects[-1].data == explorer.png != image_handle.objects[0].data


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
