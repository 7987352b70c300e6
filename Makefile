# Two commands for everything: `make book` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

COLAB := .venv-colab
SITE_ASSETS := _site_assets/.installed

.PHONY: help book test colab-compat notebooks student assignments gpu-record clean

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

# The virtual environment, rebuilt when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

## book: build the website into _build/html from the stored outputs (any warning fails it)
book: $(STAMP) $(SITE_ASSETS)
	$(BIN)/jupyter-book build --all -W -n --keep-going .

# MathJax, require.js and the widget manager, served by the site itself (needs npm)
$(SITE_ASSETS): package.json package-lock.json tools/site_assets.py | $(STAMP)
	$(BIN)/python tools/site_assets.py

## test: library tests, strict nbval over every chapter, the book build and the built site
## in a browser (tests/browser), Colab versions
# Where Triton has wheels (Linux), its interpreter tests must run, not skip.
REQUIRE_TRITON := $(if $(filter Linux,$(shell uname -s)),1,)

test: $(STAMP)
	ATTNLIB_REQUIRE_TRITON=$(REQUIRE_TRITON) $(BIN)/python -m pytest tests chapters \
		--ignore tests/browser --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300
	$(BIN)/ruff check attnlib tests tools chapters
	$(MAKE) book
	$(BIN)/python -m pytest tests/browser -q -rs
	$(MAKE) colab-compat

## colab-compat: attnlib installs over Colab's versions without upgrading any, and works there
colab-compat: $(COLAB)/.installed
	$(COLAB)/bin/python -m pip install --quiet -e .
	$(COLAB)/bin/python -c "import ipywidgets as w; assert w.__version__ == '7.7.1', \
		f'installing attnlib changed Colab ipywidgets 7.7.1 into {w.__version__}'"
	$(COLAB)/bin/python -m pytest tests -q -W "ignore::DeprecationWarning" \
		--ignore tests/test_notebooks.py --ignore tests/test_assignments.py \
		--ignore tests/test_nbgrader_round_trip.py --ignore tests/test_site_config.py \
		--ignore tests/browser

$(COLAB)/.installed: requirements-colab.txt
	test -x $(COLAB)/bin/python || $(PYTHON) -m venv $(COLAB)
	$(COLAB)/bin/python -m pip install --quiet -r requirements-colab.txt
	touch $@

## notebooks: re-execute every chapter in place, so stored outputs match the library
notebooks: $(STAMP)
	$(BIN)/python tools/notebooks.py execute
	$(BIN)/python tools/notebooks.py student

## student: solution-free copies in student/ (committed) and their links in instructors.md
student: $(STAMP)
	$(BIN)/python tools/notebooks.py student

## assignments: an nbgrader course in course/: nbgrader_config.py, one assignment per chapter
assignments: $(STAMP)
	$(BIN)/python -m tools.assignments --out course

## gpu-record: on a CUDA GPU, chapter 7's comparison (SWEEP=full|quick), written into records/
SWEEP ?= full
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-record:
	$(GPU_PYTHON) -m attnlib.benchmark --record $(SWEEP) --device cuda

## clean: remove _build, course, _site_assets and .venv-colab
clean:
	rm -rf _build course $(COLAB) _site_assets
