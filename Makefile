# Set-up lives here so the README's two commands work on a fresh clone.
# torch: an already-installed torch (e.g. your CUDA build) is kept; otherwise TORCH is installed
# (override it, e.g. make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PEERS ?= 3
ROUNDS ?= 4

.PHONY: install demo test test-fast test-scenarios lint bench
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	# pip >= 25 shows setuptools' "Editable installation" notice on every editable install: nothing to act on
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e ".[dev,hf]"
	touch $@

demo: install
	$(BIN)/p2pmodel demo --peers $(PEERS) --rounds $(ROUNDS)

# the fast tier and the swarm tier (< 10 minutes on 2 cores); plain `pytest` runs every tier
test: install
	$(BIN)/python -m pytest -m "not scenario" --durations=12

# long multi-process scenarios: Ctrl-C/SIGTERM/SIGKILL of real peers, a newcomer's walk-through (CI runs them too)
test-scenarios: install
	$(BIN)/python -m pytest -m scenario

# the tier without processes (no DHT, no peers, no subprocess): seconds, for the edit-test loop
test-fast: install
	P2PMODEL_FAST_TIER=1 $(BIN)/python -m pytest -m "not swarm"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/inner_step.py
