# Two commands for a fresh clone:
#   make demo   installs the requirements, trains and evaluates on the embedded digits data
#   make test   installs the requirements (the tests' too) and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo

.PHONY: install install-test demo lint test test-kernels clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# What only the tests and the lint need (pytest, scipy, ruff).
$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

install-test: $(VENV)/.installed-test

# Digits 0-5 known, 6-9 unknown; a small backbone, a few epochs, on the CPU. The harness
# trains VMDLS, its autoencoder and the cross-entropy baseline, evaluates every detector
# and the untrained reference, and prints one table (each step announced as it starts; the
# same command with --dry_run lists the steps' command lines).
demo: install
	rm -rf $(DEMO_DIR)
	$(PY) -m experiments.benchmark --profile demo --seeds 1 --accelerator cpu --output_dir $(DEMO_DIR)

lint: install-test
	$(VENV)/bin/ruff check .

test: install-test
	$(PY) -m pytest -q

# The tests that compare with numbers recorded on another machine, under the kernels another
# CPU would use: the baseline ones, and AVX2 ones on an AVX-512 machine (.ci/run runs it).
test-kernels: install-test
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m recorded
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -q -m recorded

clean:
	rm -rf outputs .pytest_cache
