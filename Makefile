# Two set-up commands (see README):
#   make demo   - install everything into .venv and run the end-to-end demo on the bundled example model
#   make test   - install everything (with test tools) into .venv and run the test suite
#   make mutants - mutation testing (mutmut) of the modules listed under [tool.mutmut] in pyproject.toml; slow
#                  (tens of minutes), not part of CI; see docs/testing.md
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench mutants clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,test]"
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/accelserve demo --repo model_repository

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m pip install -q -e ".[all,test,bench]"
	$(PY) bench/run_all.py

# A fresh run every time (mutmut caches results in mutants/); MUTMUT_JOBS parallel test processes.
MUTMUT_JOBS ?= 2
mutants: install
	$(PY) -m pip install -q -e ".[all,test,mutation]"
	rm -rf mutants
	$(PY) -m mutmut run --max-children $(MUTMUT_JOBS)
	$(PY) -m mutmut results

clean:
	rm -rf $(VENV) build *.egg-info mutants
