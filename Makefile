# make demo: the detect flow offline (synthetic COCO, stand-in models); make test: the test suite.
# Both create .venv and install the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test lock clean deploy worker alert storage

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: install
	$(PY) -m flows.demo

test: install
	$(PY) -m pytest -q

# Prefect: the work pool and both deployments (prefect.yaml) on the server of PREFECT_API_URL
POOL ?= odbench-process
deploy: install
	$(VENV)/bin/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || $(VENV)/bin/prefect work-pool create $(POOL) --type process
	$(VENV)/bin/prefect --no-prompt deploy --all

# a process worker for the pool (one flow run at a time; start several for a sweep)
worker: install
	$(VENV)/bin/prefect worker start --pool $(POOL) --limit 1

# the automation that notifies WEBHOOK_URL when a regression run fails
alert: install
	@test -n "$(WEBHOOK_URL)" || (echo "usage: make alert WEBHOOK_URL=https://..." && exit 2)
	$(PY) -m flows.alerts --webhook_url "$(WEBHOOK_URL)"

# what the storage root holds (sizes, ages); clean-up itself: python -m flows.cleanup --help
storage: install
	$(PY) -m flows.cleanup --list

# constraints.txt pins every package to the versions tested; refresh it deliberately
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[test]'
	(echo "# Exact versions that make demo / make test install (pip constraints). Regenerate: make lock"; \
	 .lock-venv/bin/pip freeze --exclude-editable | grep -v '^odbench') > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
