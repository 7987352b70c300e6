"""The scripts and fonts the website serves itself, so that it works with no network.

    python tools/site_assets.py      # `make book` runs it when package-lock.json changes

MathJax, require.js and the Jupyter widget manager come from npm at the versions pinned
in package.json and package-lock.json (`npm ci`), and are copied into
`_site_assets/assets/` with a script that sets them up (`WIDGETS_SETUP_JS`).  Sphinx
copies that folder into the site (`html_extra_path` in `_config.yml`, where
`mathjax_path` and `nb_ipywidgets_js` point at these files).
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
OUT = ROOT / "_site_assets"
SERVED = OUT / "assets"  # the site's /assets/ folder
NEEDS_NPM = ("make book needs npm (Node.js 18 or newer) to install MathJax and the widget "
             "scripts that the website serves itself: install Node.js, then run make book again")
FONTS = ("*.woff2", "*.woff", "*.ttf", "*.eot", "*.svg")
# (npm package, path or glob inside it, folder under assets/): what the pages load.
# MathJax loads its fonts, TeX extensions and accessibility parts on demand, relative to
# its own script, so those folders come along; its SVG and other combined builds do not.
COPIES = [
    ("mathjax", "es5/tex-mml-chtml.js", "mathjax"),
    *(("mathjax", f"es5/{part}", "mathjax") for part in ("input", "output", "a11y", "ui", "sre",
                                                           "adaptors")),
    ("mathjax", "LICENSE", "mathjax"),
    ("requirejs", "require.js", "."),
    ("@jupyter-widgets/html-manager", "dist/embed-amd.js", "html-manager"),
    # the fonts its styles name (FontAwesome), found through WIDGETS_SETUP_JS
    *(("@jupyter-widgets/html-manager", f"dist/{font}", "html-manager") for font in FONTS),
]

# Loaded before require.js and the widget manager (`nb_ipywidgets_js` in _config.yml).
# 1. require.js reads a global `require` object as its configuration.  Each module of
#    the widget manager finds its fonts beside itself, and require.js would place the
#    modules beside each page: this places them all in the site's assets/html-manager/.
# 2. The widget manager typesets widget labels with MathJax 2's `MathJax.Hub.Queue`; the
#    site runs MathJax 3 (`typesetPromise`), so without this a page's widgets raise
#    "Cannot read properties of undefined (reading 'Queue')".
WIDGETS_SETUP_JS = """(function () {
  var here = new URL("html-manager", document.currentScript.src).href;
  window.require = {paths: {"@jupyter-widgets": here, "@jupyter-widgets/html-manager/dist": here}};
  document.addEventListener("DOMContentLoaded", function () {
    var mathjax = window.MathJax;
    if (mathjax && mathjax.startup && !mathjax.Hub) {
      mathjax.Hub = {Queue: function (job) {
        mathjax.startup.promise.then(function () { return mathjax.typesetPromise([job[2]]); });
      }};
    }
  });
})();
"""


def install():
    """`npm ci`: node_modules exactly as package-lock.json says."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(NEEDS_NPM)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT,
                   check=True)


def copy(node_modules=NODE_MODULES, served=SERVED):
    """Copy what the pages load from node_modules into `served`; return the files."""
    if served.exists():
        shutil.rmtree(served)
    copied = []
    for package, pattern, folder in COPIES:
        sources = sorted((node_modules / package).glob(pattern))
        if not sources:
            raise FileNotFoundError(f"{package}/{pattern} is not in {node_modules}: run npm ci")
        for source in sources:
            target = served / folder / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
                copied += [p for p in target.rglob("*") if p.is_file()]
            else:
                shutil.copy2(source, target)
                copied.append(target)
    setup = served / "widgets-setup.js"
    setup.write_text(WIDGETS_SETUP_JS)
    return copied + [setup]


def main():
    install()
    files = copy()
    size = sum(f.stat().st_size for f in files)
    (OUT / ".installed").touch()
    print(f"{SERVED.relative_to(ROOT)}: {len(files)} files, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
