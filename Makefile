# Two entry points (see README): `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pin the CPU torch wheel before anything else can pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,dev,scale,dense,server]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/igpo-demo

# Lint (ruff, configured in pyproject.toml), then two pytest workers on two cores, one torch thread each (more
# threads only contend).
test: install
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --timeout 900

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
