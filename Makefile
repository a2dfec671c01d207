# The two commands: `make run` (the whole system on embedded defaults) and `make test`.
# Both build .venv from requirements.lock when it is missing or out of date.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run cluster test setup lint typecheck pytest browser bench clean

run: setup
	$(BIN)/python -m tools.run

# Beyond one machine, locally: three NATS nodes and two replicas of every service.
cluster: setup
	$(BIN)/python -m tools.cluster

test: setup browser lint typecheck pytest

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# urllib3-future (caldav -> niquests) is built from its sdist with its override off: its
# wheel's .pth copies the fork over urllib3 at every start, and requests-based tools
# (schemathesis) then fail (PITFALLS "urllib3-future").
$(STAMP): requirements.lock pyproject.toml | $(BIN)/python
	URLLIB3_NO_OVERRIDE=1 $(BIN)/pip install --quiet --disable-pip-version-check \
	  --no-binary urllib3-future -r requirements.lock
	$(BIN)/python -c "import urllib3, schemathesis; assert not hasattr(urllib3, 'future'), urllib3.__file__"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

# Browser tests drive Debian's chromium; install it when missing and we may (root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: browser tests will skip"; \
	  else echo "chromium missing and not root: browser tests will skip"; fi; }

bench: setup
	$(BIN)/python bench/booking.py
	$(BIN)/python bench/availability.py
	$(BIN)/python bench/calendar_sync.py
	$(BIN)/python bench/reminders.py
	$(BIN)/python bench/referrals.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
