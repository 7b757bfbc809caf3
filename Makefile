# stillmoving: `make demo` (fresh machine to out/demo.mp4), `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU torch wheel: from the machine's local wheelhouse when it has one, else from PyTorch's index.
TORCH_INDEX ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu*),,https://download.pytorch.org/whl/cpu)
PYTEST_ARGS ?=

.PHONY: venv demo up down test test-heavy test-fast lint clean shapes-world shapes-bars evidence

$(VENV)/.installed: requirements/dev.lock requirements/constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements/dev.lock -c requirements/constraints-cpu.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m scripts.demo

up: venv
	$(PY) -m scripts.stack up

down:
	$(PY) -m scripts.stack down

test: venv
	$(PY) -m pytest -q -m "not heavy" $(PYTEST_ARGS)

# The checks of a minute or more each; CI runs them after `make test`.
test-heavy: venv
	$(PY) -m pytest -q -m heavy $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not heavy" $(PYTEST_ARGS)

# Train the shapes world from nothing (seeded, 2 CPU cores, about an hour) into models/shapes/, then measure it.
shapes-world: venv
	$(PY) -m engine.shapes.build
	$(PY) -m scripts.base_keys shapes

shapes-bars: venv
	$(PY) -m engine.shapes.bars

# The controlled experiment of issue #12 (Still-Moving vs naive injection and the ablations) into docs/evidence.md
# and docs/evidence.json; planned for 60 min on 2 quiet cores.
evidence: venv
	$(PY) -m engine.shapes.evidence

clean:
	rm -rf var out .pytest_cache
