# The README's commands. Everything installs into .venv; services are embedded unless
# NETRING_DATABASE_URL / NETRING_REDIS_URL name existing ones.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEVSTACK := $(PY) -m netring_site.devstack

.PHONY: demo test lint bench lab install clean

$(STAMP): requirements/base.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(DEVSTACK) demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# mypy's Django plugin reads settings, which need these names (never contacted).
	NETRING_DATABASE_URL=postgresql://lint@localhost/lint NETRING_REDIS_URL=redis://localhost NETRING_DATA_DIR=$(CURDIR)/.netring/lint \
	  $(VENV)/bin/mypy

test: $(STAMP) lint
	NETRING_DATA_DIR=$(CURDIR)/.netring/test $(DEVSTACK) --data $(CURDIR)/.netring/test run -- \
	  sh -c '$(PY) manage.py makemigrations --check --dry-run && $(PY) -m pytest $(PYTEST_ARGS)'

bench: $(STAMP)
	NETRING_DATA_DIR=$(CURDIR)/.netring/bench $(DEVSTACK) --data $(CURDIR)/.netring/bench run -- \
	  $(PY) -m bench $(BENCH_ARGS)

# The network lab of the end-to-end tests, left running for a person (root: network namespaces).
lab: $(STAMP)
	$(PY) -m tests.lab $(LAB_ARGS)

clean:
	rm -rf .netring/test .netring/bench
