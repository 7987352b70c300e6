# Two commands for everything: `make book` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test notebooks student lint clean

# The virtual environment, rebuilt when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

## book: build the website into _build/html (strict: warnings and notebook errors fail it)
book: $(STAMP)
	$(BIN)/jupyter-book build --all -W -n --keep-going .

## test: library tests, strict nbval over every chapter, the book build
test: $(STAMP)
	$(BIN)/python -m pytest tests chapters --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300
	$(BIN)/ruff check attnlib tests tools
	$(MAKE) book

## notebooks: re-execute every chapter in place, so stored outputs match the library
notebooks: $(STAMP)
	$(BIN)/python tools/notebooks.py execute

## student: copies of the chapters without solutions, in student/
student: $(STAMP)
	$(BIN)/python tools/notebooks.py student --out student

clean:
	rm -rf _build student
