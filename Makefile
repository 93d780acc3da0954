# dwf-lab: two commands do all set-up on a fresh machine.
#   make run    the course, headlessly (papermill), at PROFILE (default: laptop)
#   make test   the layout checks + the whole test suite (unit, real-data, pipeline, notebooks via nbval, browser,
#               the launcher on a single-node SLURM cluster started for it)
# Both create (or reuse) ./.venv unless a virtual environment is already active.

PYTHON  ?= python3
PROFILE ?= laptop
RUN     ?=
# make test's pytest processes side by side (tests/run_suite.sh): 2, the course's half and the
# rest, one torch thread each, for this project's 2-core CI machine; 1 runs them one after another.
TEST_WORKERS ?= 2
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.dwf-lab-installed

# The real CIFAR-10 subset, when the shared folder sits beside the checkout.
# A setting of this Makefile (never of the package): override DWF_CIFAR10_SUBSET=... or leave empty.
SUBSET_FILE := $(firstword $(wildcard ../shared/data/cifar10-subset.npz))
ifneq ($(SUBSET_FILE),)
export DWF_CIFAR10_SUBSET ?= $(abspath $(SUBSET_FILE))
endif

.PHONY: run test lint setup browser-deps clean-venv bench lock help

help:
	@sed -n '1,5p' Makefile

# constraints.txt pins every package to the versions the suite passes with: a fresh
# install is the tested one. `make lock` re-resolves it on purpose (then run make test).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[notebooks,attacks,launch,test]"
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) -m dwf_lab course --profile $(PROFILE) $(if $(RUN),--run $(RUN))

# Chromium for the browser test (Debian's package; Playwright never downloads a browser).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "browser-deps: could not install chromium; the browser test will skip"; \
	  else echo "browser-deps: chromium not found and cannot be installed here; the browser test will skip"; fi; }

# The layout's rules (docs/architecture.md): import-linter's layer contract and ruff's small rule set.
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check dwf_lab tests

# A single-node SLURM cluster on localhost for the launcher's SLURM test (Debian's slurm-wlm + munge;
# as root only: elsewhere that test skips and says why); stopped when the tests end.
test: setup browser-deps lint
	@bash tests/slurm/start_cluster.sh || echo "make test: no SLURM cluster here; tests/slurm will skip"
	OMP_NUM_THREADS=1 DWF_PROFILE=smoke PY=$(PY) TEST_WORKERS=$(TEST_WORKERS) bash tests/run_suite.sh; \
	  rc=$$?; bash tests/slurm/start_cluster.sh stop >/dev/null 2>&1; exit $$rc

bench: setup
	$(PY) benchmarks/bench.py

# Re-resolve the pins: a throw-away venv gets the newest allowed versions, and its freeze
# becomes constraints.txt. Review the diff and run make test before committing it.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e ".[notebooks,attacks,launch,test]"
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^dwf-lab'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

clean-venv:
	rm -rf .venv
