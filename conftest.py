"""pytest: every test that runs or reads a chapter notebook (or the website built from
them) carries the `notebooks` mark, so that `pytest -m "not notebooks" tests` runs the
library's tests alone."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb" or "browser" in item.path.parts:
            item.add_marker(pytest.mark.notebooks)
