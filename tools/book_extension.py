"""The book's own Sphinx extension (`sphinx.local_extensions` in `_config.yml`).

It removes scripts that a page would otherwise run twice.  Sphinx 7.4 keeps an inline
script that an extension adds after the builder starts (`app.add_js_file(None, body=...)`
in an event) twice: once as given, once more, named "" instead of None, when it copies
the registered scripts before writing.  sphinx-thebe adds such a script,
`const THEBE_JS_URL = ...`, and declaring a `const` twice is an error in every page's
console ("Identifier 'THEBE_JS_URL' has already been declared").
"""


def script_key(script):
    """What makes two scripts the same: file (None and "" alike), priority, attributes."""
    return (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))


def drop_repeated_scripts(app, pagename, templatename, context, doctree):
    """Keep the first of the page's scripts that are the same (see `script_key`)."""
    scripts, kept, seen = context.get("script_files", []), [], set()
    for script in scripts:
        if script_key(script) not in seen:
            seen.add(script_key(script))
            kept.append(script)
    scripts[:] = kept  # the builder's own list, restored after each page


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts, priority=900)  # after the others
    return {"parallel_read_safe": True, "parallel_write_safe": True}
