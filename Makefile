# Every command a person runs. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000
export HF_HUB_OFFLINE := 1

.PHONY: demo test install install-dev services-check migrate lint format bench crowd clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt constraints.txt | $(VENV)/bin/python
	$(PIP) install --quiet -c constraints.txt -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt constraints.txt | $(VENV)/bin/python
	$(PIP) install --quiet -c constraints.txt -r requirements-dev.txt
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

services-check: install
	$(PY) -m feedback_app.preflight --create-db

migrate: services-check
	$(PY) manage.py migrate --noinput

# Embedded (SQLite + filesystem broker under var/) unless DATABASE_URL / REDIS_URL are set.
demo: migrate
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py seed_demo
	@echo
	@echo "  Open http://127.0.0.1:$(PORT)/  (API docs: http://127.0.0.1:$(PORT)/api/docs/)"
	@echo "  Stop with Ctrl-C."
	@echo
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PORT=$(PORT) $(VENV)/bin/honcho start -f Procfile

# Browser tests drive Debian's Chromium; install it when it is missing (needs root).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# Clip rendering draws MuJoCo offscreen with OSMesa (MUJOCO_GL=osmesa, software GL): Debian's
# libosmesa6. Classic-control environments need no GL.
/usr/lib/x86_64-linux-gnu/libOSMesa.so.8:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libosmesa6 >/dev/null

# A second web host with its clock off, for the one-clock lease tests: Debian's faketime.
/usr/bin/faketime:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null

# Compose-file validation uses Debian's docker-compose (the v1 parser; no engine needed).
/usr/bin/docker-compose:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null

# deploy/nginx.conf is checked with `nginx -t` (tests/test_deploy.py): Debian's nginx-light.
/usr/sbin/nginx:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null

test: install-dev
	$(PY) -m feedback_app.preflight --require-servers
	$(MAKE) --no-print-directory /usr/bin/chromium /usr/bin/docker-compose /usr/bin/faketime /usr/sbin/nginx \
		/usr/lib/x86_64-linux-gnu/libOSMesa.so.8
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install-dev
	$(PY) bench/annotate_loop.py

# 200 annotators for 2 minutes with a web worker, the database, the broker and the Celery
# worker broken on purpose; exits non-zero if an invariant fails (docs/benchmarks.md).
crowd: install-dev
	$(PY) bench/crowd.py --annotators 200 --duration 120 --faults all

clean:
	rm -rf $(VENV) staticfiles
