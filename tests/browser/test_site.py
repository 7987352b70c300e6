"""The built website as a reader sees it: every page in a real headless Chromium, with
no network (any request that is not to the local server is refused).

Run after `make book` (`make test` does): `.venv/bin/python -m pytest tests/browser`.
The browser is Debian's `chromium` (`/usr/bin/chromium`, or the path in $CHROMIUM),
driven by Playwright.  Without it these tests are skipped with one line, except under CI
(`CI` set), where that is a failure.  Screenshots of every page go to _build/screenshots/.
"""

import functools
import itertools
import json
import os
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
# Sphinx's own pages, beside those of the table of contents.
SPHINX_PAGES = ["genindex", "search", "py-modindex"]
PAGE_BUDGET, NOTEBOOK_BUDGET = 3e6, 2e6  # bytes: a chapter page with its images, a notebook
# Visible text that is TeX left for MathJax: \( \[ $$, or $...$ around a TeX character.
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\$[^$\n]*[\\^_{][^$\n]*\$")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def toc_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


PAGES = toc_pages() + SPHINX_PAGES


def missing_browser():
    """Why the browser cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (requirements.txt pins it)"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM}"
    return None




def notebook(page):
    path = ROOT / f"{page}.ipynb"
    return nbformat.read(path, as_version=4) if path.exists() else None


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    if not (SITE / "intro.html").exists():
        pytest.fail(f"no built site in {SITE}: run `make book` first")
    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    missing = missing_browser()
    if missing is not None:
        message = (f"browser test not run: {missing}; install Debian's chromium "
                   "(apt-get install chromium) or set CHROMIUM to a Chromium binary")
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots():
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


class Visit:
    """One page opened offline; `problems` collects what a reader would see go wrong."""

    def __init__(self, browser, url):
        self.problems = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._only_local)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(
            f"failed request: {r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"HTTP {r.status}: {r.url}"))
        self.page.goto(url, wait_until="networkidle")
        self.page.evaluate("""async () => {
            if (window.MathJax && MathJax.startup && MathJax.startup.promise)
                await MathJax.startup.promise;
        }""")

    def _only_local(self, route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.problems.append(f"needs the network: {route.request.url}")
            route.abort()

    def settle(self):
        """Screenshot the whole page, wait for what that loads; return all problems."""
        self.page.screenshot(path=self.screenshot, full_page=True)
        self.page.wait_for_load_state("networkidle")
        return self.problems

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, server, screenshots, request):
    page = request.param
    opened = Visit(browser, urljoin(server, f"{page}.html"))
    opened.screenshot = screenshots / f"{page.replace('/', '_')}.png"
    yield page, opened
    opened.close()


def check_maths(page):
    """Every formula typeset by MathJax, none in error, no TeX left in the text."""
    problems = page.evaluate("""() => {
        const out = [];
        document.querySelectorAll(".math").forEach(m => {
            if (!m.querySelector("mjx-container")) out.push("not typeset: " + m.textContent);
            else if (m.querySelector("mjx-merror")) out.push("TeX error: " + m.textContent);
        });
        return out;
    }""")
    text = page.evaluate("""() => {
        const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        const skip = "PRE CODE SCRIPT STYLE TEXTAREA MJX-CONTAINER";
        let text = "", node;
        while ((node = walker.nextNode()))
            if (!node.parentElement.closest(skip.split(" ").join(","))) text += node.data;
        return text;
    }""")
    return problems + [f"raw TeX in the text: {m}" for m in RAW_TEX.findall(text)]


def check_images(page):
    return page.evaluate("""() => Array.from(document.images).flatMap(img => {
        const name = img.currentSrc.slice(0, 80);
        const out = [];
        if (!img.complete || img.naturalWidth === 0) out.push("image not loaded: " + name);
        if (!(img.getAttribute("alt") || "").trim()) out.push("image without alt text: " + name);
        return out;
    })""")


def check_explorers(page, nb):
    """Each static explorer shows, for every precomputed setting its controls are moved
    to, the figure and text stored for that setting; the key is worked out here from
    the positions of the controls.  Other widgets (progress bars) keep their own view."""
    problems = []
    outputs = [o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    explorers = page.locator(".attnlib-explorer")
    static = sum("attnlib-explorer" in "".join(data.get("text/html", "")) for data in outputs)
    if explorers.count() != static:
        problems.append(f"{explorers.count()} static explorers for {static} in the notebook")
    views = page.locator(f'script[type="{WIDGET_VIEW}"]').count()
    if views != len(outputs) - static:
        problems.append(f"{views} live widget views for {len(outputs) - static} other widgets")
    for e in range(explorers.count()):
        problems += walk_settings(explorers.nth(e))
    return problems


def walk_settings(root):
    """Move the controls through every setting of the grid, odometer-wise."""
    problems, data = [], json.loads(root.locator(".attnlib-explorer-data").text_content())
    specs = data["controls"]
    start = [control_position(root, i, spec) for i, spec in enumerate(specs)]
    for i, spec in enumerate(specs):
        if len(spec["values"]) == 1 and root.locator(f'[data-control="{i}"]').is_enabled():
            problems.append(f"{spec['label']} has one value but can be moved")
    position, shown, changed = list(start), showing(root), set()
    for setting in itertools.product(*(range(len(spec["values"])) for spec in specs)):
        moved = [i for i, j in enumerate(setting) if position[i] != j]
        for i in moved:
            move(root, i, specs[i], setting[i])
            position[i] = setting[i]
        before, shown = shown, showing(root)
        if shown != before:
            changed.update(moved)
        image, text = data["settings"][",".join(map(str, setting))]
        label = ", ".join(f"{s['label']} = {s['values'][j]}" for s, j in zip(specs, setting,
                                                                            strict=True))
        if image is not None and shown[0] != data["images"][image]:
            problems.append(f"{label}: not the precomputed figure")
        if shown[1] != data["texts"][text]:
            problems.append(f"{label}: not the precomputed text")
    for i, spec in enumerate(specs):
        if len(spec["values"]) > 1 and i not in changed:
            problems.append(f"moving {spec['label']} never changes the figure or the text")
    for i, j in enumerate(start):
        if position[i] != j:
            move(root, i, specs[i], j)
    return problems


def showing(root):
    return tuple(root.evaluate("""root => [
        (root.querySelector(".attnlib-explorer-figure") || {}).src || null,
        root.querySelector(".attnlib-explorer-text").textContent]"""))


def control_position(root, i, spec):
    control = root.locator(f'[data-control="{i}"]')
    if spec["kind"] == "checkbox":
        return spec["values"].index(control.is_checked())
    return int(control.input_value())


def move(root, i, spec, j):
    control = root.locator(f'[data-control="{i}"]')
    if spec["kind"] == "checkbox":
        control.set_checked(spec["values"][j])
    elif spec["kind"] == "range":
        control.fill(str(j))
    else:
        control.select_option(str(j))


def check_solutions(page):
    problems = []
    solutions = page.locator(".solution.dropdown")
    for s in range(solutions.count()):
        solution = solutions.nth(s)
        body = solution.locator("section").first
        if body.is_visible():
            problems.append(f"solution {s + 1} is open before a click")
        solution.locator(".admonition-title .toggle-button").click()
        if not body.is_visible():
            problems.append(f"solution {s + 1} does not open")
    return problems


def check_launch_buttons(page, name, url):
    """Colab opens this page's notebook in the repository of _config.yml; the download
    button gives the very notebook of the repository."""
    problems = []
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    colab = (f"https://colab.research.google.com/github/"
             f"{urlsplit(repository['url']).path.strip('/')}/blob/{repository['branch']}/"
             f"{name}.ipynb")
    links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    if colab not in links:
        problems.append(f"no Colab link to {colab}")
    downloads = [link for link in links if link.endswith(".ipynb") and "127.0.0.1" in link]
    if not downloads:
        return problems + ["no download link to the notebook"]
    response = page.request.get(urljoin(url, downloads[0]))
    source = [c.source for c in nbformat.reads(response.text(), as_version=4).cells]
    if source != [c.source for c in notebook(name).cells]:
        problems.append(f"the download {downloads[0]} is not {name}.ipynb")
    return problems


@pytest.mark.parametrize("visit", PAGES, indirect=True)
def test_page_reads_well_offline(visit):
    name, opened = visit
    page = opened.page
    problems = check_maths(page) + check_images(page)
    nb = notebook(name)
    if nb is not None:
        problems += check_explorers(page, nb) + check_solutions(page)
        problems += check_launch_buttons(page, name, page.url)
    if name == "search":
        problems += check_search(page)
    problems = opened.settle() + problems
    assert not problems, f"{name}.html:\n" + "\n".join(problems)


def check_search(page):
    """Searching "softmax" lists the chapter that defines it."""
    page.goto(page.url + "?q=softmax", wait_until="networkidle")
    results = page.locator("ul.search li a")
    results.first.wait_for()
    paths = [urlsplit(h).path for h in results.evaluate_all("links => links.map(a => a.href)")]
    chapter = chapter_that_defines("softmax")
    return [] if f"/{chapter}.html" in paths else [f"search for softmax misses {chapter}: {paths}"]


def chapter_that_defines(function):
    """The chapter whose stored outputs show `def function(`: the library's source."""
    for name in toc_pages():
        nb = notebook(name)
        if nb and any(f"def {function}(" in str(o) for c in nb.cells for o in c.get("outputs", [])):
            return name
    raise AssertionError(f"no chapter shows def {function}(")


def test_every_built_page_is_visited():
    built = sorted(p.relative_to(SITE).with_suffix("").as_posix() for p in SITE.rglob("*.html")
                   if not p.relative_to(SITE).parts[0].startswith("_"))
    assert built == sorted(PAGES + ["index"])  # index.html only redirects to the root page


def page_weight(html):
    """Bytes of a built page and of the image files it shows (data: images are inside)."""
    text = html.read_text()
    images = set(re.findall(r'<img [^>]*src="([^":]+)"', text))
    return len(text.encode()) + sum((html.parent / src).stat().st_size for src in images)


@pytest.mark.parametrize("name", [p for p in toc_pages() if notebook(p) is not None])
def test_chapters_stay_light(name):
    html = SITE / f"{name}.html"
    assert page_weight(html) < PAGE_BUDGET, f"{html}: {page_weight(html) / 1e6:.2f} MB"
    size = (ROOT / f"{name}.ipynb").stat().st_size
    assert size < NOTEBOOK_BUDGET, f"{name}.ipynb: {size / 1e6:.2f} MB"
