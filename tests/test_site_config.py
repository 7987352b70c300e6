"""The website's configuration holds together: the scripts the pages load are the files the
build copies from npm, the versions are pinned, Binder gets the same pins with PyTorch's
CPU build, the workflow tests before it publishes, and no script runs twice in a page.
(tests/browser checks the built site itself.)"""

import json
import posixpath
import re
import shutil
from pathlib import Path

import pytest
import yaml
from myst_nb.core.render import get_mime_priority
from sphinx.builders.html._assets import _JavaScript

from tools import book_extension, site_assets

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
SPHINX = CONFIG["sphinx"]["config"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def served_path(path_from_static):
    """Where a page finds a script that Sphinx config names relative to _static/."""
    return posixpath.normpath(posixpath.join("_static", path_from_static))


def test_pages_load_mathjax_and_the_widget_scripts_from_the_site(tmp_path):
    fake_modules = tmp_path / "node_modules"
    for package, pattern, _ in site_assets.COPIES:  # one file wherever a copy looks
        file = fake_modules / package / pattern.replace("*", "font")
        file = file / "part.js" if "." not in file.name else file
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(package)
    served = tmp_path / "_site_assets" / "assets"
    copied = site_assets.copy(fake_modules, served)
    site = {p.relative_to(served.parent).as_posix() for p in copied}
    scripts = [SPHINX["mathjax_path"], *SPHINX["nb_ipywidgets_js"]]
    assert [served_path(s) for s in scripts] == [
        "assets/mathjax/tex-mml-chtml.js", "assets/widgets-setup.js", "assets/require.js",
        "assets/html-manager/embed-amd.js"]
    assert {served_path(s) for s in scripts} <= site
    assert "assets/mathjax/output/part.js" in site  # MathJax's fonts come along
    assert SPHINX["html_extra_path"] == [site_assets.OUT.name]
    assert all("://" not in s for s in scripts)


def test_copy_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mathjax/es5/tex-mml-chtml.js is not in"):
        site_assets.copy(tmp_path, tmp_path / "assets")


def test_without_npm_the_build_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as stopped:
        site_assets.install()
    assert "make book needs npm" in str(stopped.value) and "\n" not in str(stopped.value)


def test_npm_versions_are_pinned_and_locked():
    wanted = json.loads((ROOT / "package.json").read_text())["dependencies"]
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    assert {"mathjax", "requirejs", "@jupyter-widgets/html-manager"} <= set(wanted)
    for package, version in wanted.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{package} {version} is not a pin"
        assert locked[f"node_modules/{package}"]["version"] == version


def test_the_website_shows_the_static_copy_and_keeps_other_widgets():
    priority = get_mime_priority("html", SPHINX["nb_mime_priority_overrides"])
    explorer = {WIDGET_VIEW: {}, "text/html": "<div>", "text/plain": "text"}
    assert next(m for m in priority if m in explorer) == "text/html"
    plain_widget = {WIDGET_VIEW: {}, "text/plain": "HBox(...)"}
    assert next(m for m in priority if m in plain_widget) == WIDGET_VIEW


def requirement_pins(path):
    pins = {}
    for line in (ROOT / path).read_text().splitlines():
        if line and not line.startswith(("#", "-")):
            name, version = line.split(";")[0].strip().split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_binder_has_the_pins_of_requirements_with_pytorch_for_the_cpu():
    pins, binder = requirement_pins("requirements.txt"), requirement_pins("binder/requirements.txt")
    assert binder.pop("torch") == pins.pop("torch") + "+cpu"
    assert binder == pins
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert "-e ." in lines  # attnlib from the repository, as in requirements.txt
    python = re.search(r"\(Python (\d+\.\d+)\)", (ROOT / "requirements.txt").read_text())
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == f"python-{python.group(1)}"


def test_workflow_tests_then_publishes_the_site_from_the_default_branch():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    test, deploy = workflow["jobs"]["test"], workflow["jobs"]["deploy"]
    runs = [step.get("run") for step in test["steps"]]
    assert ".ci/run" in runs
    upload = next(s for s in test["steps"] if s.get("uses", "").startswith(
        "actions/upload-pages-artifact@"))
    assert upload["with"]["path"].rstrip("/") == "_build/html"
    assert runs.index(".ci/run") < test["steps"].index(upload)
    default_branch_push = ("github.event_name == 'push' && "
                           "github.ref_name == github.event.repository.default_branch")
    assert upload["if"] == deploy["if"] == default_branch_push
    assert deploy["needs"] == "test" and deploy["environment"]["name"] == "github-pages"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["steps"][-1]["uses"].startswith("actions/deploy-pages@")


def test_ci_installs_the_browser_and_fails_without_it():
    script = (ROOT / ".ci" / "run").read_text()
    assert "missing+=(chromium)" in script and 'export CI="${CI:-true}"' in script
    assert script.strip().endswith("make test")


def test_a_script_added_twice_runs_once():
    """Sphinx 7.4 lists an inline script once named None and once named "": the page then
    declared sphinx-thebe's `const THEBE_JS_URL` twice, an error in every page."""
    thebe = "const THEBE_JS_URL = 'x'"
    scripts = [_JavaScript("_static/a.js", priority=500), _JavaScript(None, body=thebe),
               _JavaScript("", body=thebe), _JavaScript("_static/a.js", priority=500),
               _JavaScript("_static/a.js", priority=800)]
    context = {"script_files": scripts}
    book_extension.drop_repeated_scripts(None, "intro", "page.html", context, None)
    assert context["script_files"] is scripts  # the builder's own list, changed in place
    assert [(s.filename, s.priority) for s in scripts] == [
        ("_static/a.js", 500), (None, 500), ("_static/a.js", 800)]
    assert CONFIG["sphinx"]["local_extensions"] == {"book_extension": "tools/"}
