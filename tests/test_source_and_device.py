import inspect

import pytest
import torch

from attnlib import device, projections
from attnlib.source import show_source


def test_show_source_is_the_library_source_with_its_origin():
    shown = show_source(projections.qkv)
    assert shown.code == inspect.getsource(projections.qkv).rstrip()
    assert repr(shown).startswith("# attnlib.projections.qkv\ndef qkv(")
    markdown = shown._repr_markdown_()
    assert markdown.startswith("```python\n") and markdown.endswith("\n```")


def test_show_source_of_a_method_is_dedented():
    from attnlib.widgets import Explorer

    shown = show_source(Explorer.values)
    assert shown.code.startswith("def values(self):")
    assert shown.origin == "attnlib.widgets.Explorer.values"


def test_show_source_rejects_builtins():
    with pytest.raises(TypeError, match="obj must be a function, class or module"):
        show_source(len)


def test_best_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.best_device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.best_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.best_device() == torch.device("cuda")


def test_describe_cpu_names_threads_and_torch_version():
    line = device.describe_device("cpu")
    assert f"{torch.get_num_threads()} threads" in line and torch.__version__ in line


def test_show_source_of_a_triton_kernel_is_its_python_function():
    pytest.importorskip("triton")
    from attnlib import triton_attention

    shown = show_source(triton_attention.fold_key_blocks)
    assert shown.origin == "attnlib.triton_attention.fold_key_blocks"
    assert shown.code == inspect.getsource(triton_attention.fold_key_blocks.fn).rstrip()
    assert "def fold_key_blocks(" in shown.code
