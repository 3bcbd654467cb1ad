# Set-up, the notebook series and the tests. Everything installs into ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED  := executed

.PHONY: setup notebooks test lint format clean-test gpu-bench

setup: $(STAMP)

# The tested versions: ranges in pyproject.toml, pins in constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The study the series runs on: a study file (docs/study-file.md). The demo's sends figures to figures/ and results
# to results/; your own sheet: python -m nblib.study init my_sheet.xlsx -o my_study.yaml, then
# make notebooks STUDY=my_study.yaml (results/ and figures/ next to it unless it names others).
DEMO_STUDY := data/demo_study.yaml
STUDY ?= $(DEMO_STUDY)

# The encoder 03 fine-tunes and 06 compares with, when given: BERT_MODEL=bert-base-chinese (or a local model folder,
# docs/models.md) overrides the study file's model. The demo's default, tiny-random, is a small randomly initialised
# BERT built from the data: it needs no download, so the series runs anywhere, but its scores say nothing about
# BERT. Your own study without BERT_MODEL uses the model (and 06's plain_run) its study file names.
BERT_MODEL ?= $(if $(filter $(DEMO_STUDY),$(STUDY)),tiny-random)
BERT_PARAMS := $(if $(BERT_MODEL),-p model $(BERT_MODEL)) $(if $(filter tiny-random,$(BERT_MODEL)),-p epochs 10 -p lr 0.001)
PLAIN_RUN := $(if $(BERT_MODEL),-p plain_run bert_$(notdir $(BERT_MODEL)))

# The LLM 07 labels with, when given: LLM_MODEL=Qwen/Qwen2.5-0.5B-Instruct (or a local causal LM folder, docs/llm.md).
# Without it 07 uses the study file's llm_model, else tiny-random: a small random causal LM built from the data (its
# labels say nothing about LLMs).
LLM_PARAMS := $(if $(LLM_MODEL),-p llm_model $(LLM_MODEL))

# --log-output streams each cell's output (per-fold progress) to the terminal while it runs; --engine nblib runs
# the kernel over IPC sockets, so ipykernel does not warn about TCP on every notebook (nblib/papermill_engine.py).
run_nb = $(BIN)/papermill --engine nblib --log-output --cwd notebooks notebooks/$(1).ipynb $(EXECUTED)/$(1).ipynb \
	-p study $(abspath $(STUDY)) $(2)

# The main job: run every notebook headless on the study (the bundled demo by default), in order.
# Executed copies go to executed/, figures and results where the study file says.
notebooks: setup
	@test -f "$(STUDY)" || { echo "make: study file $(STUDY) not found; write one with:" \
	  "$(BIN)/python -m nblib.study init my_sheet.xlsx -o $(STUDY)"; exit 2; }
	mkdir -p $(EXECUTED)
	$(call run_nb,01_eda)
	$(call run_nb,02_baselines)
	$(call run_nb,03_bert_cv,$(BERT_PARAMS))
	$(call run_nb,04_error_analysis)
	$(call run_nb,05_predict)
	$(call run_nb,06_unlabelled,$(PLAIN_RUN))
	$(call run_nb,07_llm,$(LLM_PARAMS))

# The GPU benchmark (5-fold x 5-epoch bert-base shape, end to end, and its parts); see benchmarks/README.md.
gpu-bench: setup
	bash benchmarks/gpu.sh

# ruff (lint and format check) over the library, tests, benchmarks and notebooks.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Rewrite the code as ruff formats it.
format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Lint, unit tests, then every notebook under nbval with the small settings of tests/nbparams/*.yaml
# (papermill injects them into copies under build/nbtest; nbval executes the copies).
test: setup lint clean-test
	mkdir -p build/nbtest
	for nb in $(NOTEBOOKS); do \
	  p=tests/nbparams/$$(basename $$nb .ipynb).yaml; \
	  $(BIN)/papermill --prepare-only $$nb build/nbtest/$$(basename $$nb) $$( [ -f $$p ] && echo -f $$p ) || exit 1; \
	done
	$(BIN)/python -m pytest tests build/nbtest --nbval-lax

clean-test:
	rm -rf build/nbtest
