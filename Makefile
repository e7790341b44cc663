# Two commands do all set-up: `make demo` (main job on the bundled default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The serving environment (numpy < 2, the nvidia-pytriton wheel's Triton server): docs/serving.md says why it is apart.
SERVE_ENV ?= .venv-serve
SERVE_STAMP := $(SERVE_ENV)/.installed
TASK ?= sr
OUT ?= reports/demo

.PHONY: venv serve-env demo test test-fast bench teachers clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

$(SERVE_STAMP): $(STAMP)
	$(PY) -m asvp.runtime.serving.env $(SERVE_ENV)
	touch $(SERVE_STAMP)

serve-env: $(SERVE_STAMP)

demo: $(STAMP)
	$(VENV)/bin/asvp demo --task $(TASK) --out $(OUT)

# `make test` runs every test (CI), the real Triton server's included (it sets up .venv-serve first);
# `make test-fast` leaves out the slow ones (over ~10 s each) and the research scripts' tests (tests/research/),
# for development.
test: $(STAMP) $(SERVE_STAMP)
	ASVP_SERVE_ENV=$(abspath $(SERVE_ENV)) $(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow and not research" tests

# Measure what BENCHMARKS.md reports on this machine and rewrite it (benchmarks/, a package run from the root).
bench: $(STAMP)
	$(PY) -m benchmarks.run_all --out BENCHMARKS.md

# Reproduce the committed teacher weights (deterministic seeds; ~1-3 min per task on 2 cores).
teachers: $(STAMP)
	for t in sr lowlight underwater dehaze derain; do $(VENV)/bin/asvp train-teacher --task $$t || exit 1; done

clean:
	rm -rf $(VENV) $(SERVE_ENV) reports build *.egg-info
