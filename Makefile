# make demo: the detect flow offline (synthetic COCO, stand-in models); make test: the test suite.
# Both create .venv and install the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test lock clean

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

# constraints.txt pins every package to the versions tested; refresh it deliberately
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[test]'
	(echo "# Exact versions that make demo / make test install (pip constraints). Regenerate: make lock"; \
	 .lock-venv/bin/pip freeze --exclude-editable | grep -v '^odbench') > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
