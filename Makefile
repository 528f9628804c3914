# make demo: set up a virtual environment and run the main job.  make test: set up and run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-fast lint demo bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,bench,cluster]"
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check smoe tests benchmarks

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# the main job: 4 routers x 2 seeds on lm-bbc (tiny), trained, evaluated, analysed, in parallel worker processes
# (--jobs auto: one per core for runs this small); prints where the report is
DEMO_ROUTERS ?= topk,xmoe,ssr,deepseek
DEMO_JOBS ?= auto
demo: setup
	$(VENV)/bin/smoe compare --task lm-bbc --routers $(DEMO_ROUTERS) --seeds 2 --preset tiny \
		--corrupt substitute:2,substitute:4,insert:2,insert:4 --jobs $(DEMO_JOBS) --out runs/demo

bench: setup
	$(VENV)/bin/smoe bench layer --json docs/bench_layer_cpu.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
