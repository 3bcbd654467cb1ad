# Set-up, the notebook series and the tests. Everything installs into ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED  := executed

.PHONY: setup notebooks test clean-test

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job: run every notebook headless on the bundled demo data, in order.
# Executed copies go to executed/, figures to figures/, results to results/.
notebooks: setup
	mkdir -p $(EXECUTED)
	for nb in $(NOTEBOOKS); do \
	  $(BIN)/papermill --cwd notebooks $$nb $(EXECUTED)/$$(basename $$nb) || exit 1; \
	done

# Unit tests, then every notebook under nbval with the small settings of tests/nbparams/*.yaml
# (papermill injects them into copies under build/nbtest; nbval executes the copies).
test: setup clean-test
	mkdir -p build/nbtest
	for nb in $(NOTEBOOKS); do \
	  p=tests/nbparams/$$(basename $$nb .ipynb).yaml; \
	  $(BIN)/papermill --prepare-only $$nb build/nbtest/$$(basename $$nb) $$( [ -f $$p ] && echo -f $$p ) || exit 1; \
	done
	$(BIN)/python -m pytest tests build/nbtest --nbval-lax

clean-test:
	rm -rf build/nbtest
