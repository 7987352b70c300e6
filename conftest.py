"""pytest: every test that runs or reads a chapter notebook carries the `notebooks` mark,
so that `pytest -m "not notebooks" tests` runs the library's tests alone."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebooks)
