# One place for set-up and checks. `make demo` and `make test` work on a fresh machine:
# they create .venv, install torch==2.13.0 (a CPU build on these machines) and then the package.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.exitnet-installed
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-all check format bench bench-full bench-data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/exitnet demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

check: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The benchmarks need Fashion-MNIST (Debian package dataset-fashion-mnist). When it is missing and we are root,
# try to install it; otherwise `exitnet bench` stops with a message that says how to get it.
bench-data: $(STAMP)
	@$(BIN)/python -c "import exitnet.data as d; d.fashion_mnist(download=False, limit=1)" >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; }; } || true

bench: bench-data
	$(BIN)/exitnet bench --suite quick

bench-full: bench-data
	$(BIN)/exitnet bench --suite full

clean:
	rm -rf $(VENV) runs build src/*.egg-info
