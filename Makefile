# Everyday commands. Each one creates the virtualenv first if it is missing.
#   make run    the dispatcher and the VSS emulator against the local RabbitMQ
#   make test   the whole test suite (needs RabbitMQ on 127.0.0.1:5672)
#   make bench  the benchmark against a minimal reference consumer
#   make bench-instructions  instructions per job under valgrind, both sides
#   make bench-split  the display timing gap taken apart (needs tcpdump, root)
#   make lint   ruff, black and mypy

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test bench bench-smoke bench-instructions bench-split lint clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# compat mode puts the checkout on sys.path, so twistd finds twisted/plugins here
	$(BIN)/python -m pip install --quiet --no-deps -e . --config-settings editable_mode=compat
	touch $(STAMP)

run: venv
	VENV=$(VENV) ./scripts/run-local

test: venv
	$(BIN)/trial $(TRIAL_ARGS) tests

bench: venv
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

bench-smoke: venv
	$(BIN)/python benchmarks/run.py --smoke $(BENCH_ARGS)

bench-instructions: venv
	$(BIN)/python benchmarks/instructions.py $(BENCH_ARGS)

bench-split: venv
	$(BIN)/python benchmarks/split.py $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check vss_dispatcher tests twisted benchmarks
	$(BIN)/black --check vss_dispatcher tests twisted benchmarks
	$(BIN)/mypy vss_dispatcher

clean:
	rm -rf $(VENV) _trial_temp build dist *.egg-info
