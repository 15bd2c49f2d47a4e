# make run: set up and serve on :8000     make test: set up and run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export FLASK_APP := app.py
SHELL := /bin/bash

.PHONY: setup setup-dev run test clean loadtest locust-ui lean-ramp bench bench-scale bench-fair bench-capacity cluster cluster-stop

# what the service needs (requirements.txt, this project editable: pyproject.toml)
$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

# and the test and load tools
$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed
setup-dev: $(BIN)/.installed-dev

# The web server and the scheduler together; Ctrl-C (or either one exiting) stops both.
# Redis: with no REDIS_URL set and nothing on :6379, a redis-server of its own that writes every
# claim to instance/redis/ before the answer (appendfsync always: see docs/operations.md).
# Stopped by Ctrl-C or SIGTERM it ends with status 0 (not make's "Error 130/143"): the stop was
# asked for; one of them exiting by itself ends it with that one's status.
run: setup
	$(BIN)/flask db init
	@trap 'kill $$web $$jobs $$redis 2>/dev/null; wait' EXIT; trap 'exit 0' INT TERM; \
	if [ -n "$$REDIS_CLUSTER_NODES" ]; then \
		echo "on the Redis Cluster of REDIS_CLUSTER_NODES"; \
	elif [ -z "$$REDIS_URL" ] && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then \
		mkdir -p instance/redis; \
		redis-server --bind 127.0.0.1 --port 6379 --dir instance/redis --appendonly yes \
			--appendfsync always --save '' --logfile redis.log & redis=$$!; \
	elif redis-cli -u "$${REDIS_URL:-redis://127.0.0.1:6379/0}" config get appendonly 2>/dev/null | grep -qx no; then \
		echo "warning: this Redis keeps no append-only file: a restart loses the claims not yet flushed"; \
	fi; \
	PROMETHEUS_MULTIPROC_DIR=instance/prometheus $(BIN)/flask jobs run & jobs=$$!; \
	$(BIN)/gunicorn -k gevent app:app & web=$$!; \
	wait -n

test: setup-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Load tests against the running service (make run): SCENARIO=rush|ramp [USERS= STOCK= DURATION= HOST=]
SCENARIO ?= rush
LOADTEST_ARGS = --scenario $(SCENARIO) $(if $(USERS),--users $(USERS)) $(if $(STOCK),--stock $(STOCK)) \
	$(if $(DURATION),--duration $(DURATION)) $(if $(HOST),--host $(HOST))

loadtest: setup-dev
	$(BIN)/python -m loadtest.run $(LOADTEST_ARGS)

# Locust's web UI [the same, and WEB_PORT=8089]: each START opens a fresh campaign, each end closes and checks it
locust-ui: setup-dev
	$(BIN)/python -m loadtest.run --ui $(LOADTEST_ARGS) $(if $(WEB_PORT),--web-port $(WEB_PORT))

# The ramp from plain gevent sockets instead of Locust [USERS= STOCK= DURATION= HOST=]
lean-ramp: setup-dev
	$(BIN)/python -m loadtest.lean_ramp $(if $(USERS),--users $(USERS)) $(if $(STOCK),--stock $(STOCK)) \
		$(if $(DURATION),--duration $(DURATION)) $(if $(HOST),--host $(patsubst http://%,%,$(HOST)))

# wrk benchmark (a) ceiling (b) new tickets (c) sold out (d) flood ... (h, i) RS256, ES256 tokens;
# its own servers; figures to reports/bench-*.md [DURATION=; ONLY=bhi: those phases;
# WITH_OPS_PAGE=1: the operators' page open; RECORD=1: into BENCHMARKS.md]
bench: setup-dev
	$(BIN)/python -m loadtest.bench $(if $(DURATION),--duration $(DURATION)) $(if $(ONLY),--only $(ONLY)) \
		$(if $(WITH_OPS_PAGE),--with-ops-page) $(if $(RECORD),--record)

# what a big sale costs: memory per coupon, recover and close of one campaign of N [N=1000000],
# and what IDLE live campaigns cost while nobody asks [IDLE=1000; 0: skip]
bench-scale: setup-dev
	$(BIN)/python -m loadtest.bench_scale $(if $(N),--n $(N)) $(if $(IDLE),--idle $(IDLE))

# who gets the coupons: 3,000 users, one request and one connection each, written in a fixed order
# at 2x and 5x the measured capacity for a stock of 500; single Redis and cluster, 2 and 4 workers,
# one and two hosts, pooled and fresh connections; figures to reports/bench-fair.md
# [ONLY='single/on/w2/h1/*': those settings; RUNS= USERS= STOCK=; RATE=10000: req/s instead of 2x, 5x;
# ORDER=on: only ARRIVAL_ORDER=on (default: off, then on, paced by the capacity measured with off)]
bench-fair: setup-dev
	$(BIN)/python -m loadtest.bench_fair $(if $(ONLY),--only '$(ONLY)') $(if $(RUNS),--runs $(RUNS)) \
		$(if $(ORDER),--order $(ORDER)) \
		$(if $(USERS),--users $(USERS)) $(if $(STOCK),--stock $(STOCK)) $(if $(RATE),--rate $(RATE))

# what one coupon costs in each part: CPU microseconds of the web workers, each Redis master, the
# flushers and MariaDB (wrk apart), with 1, 2 and 4 web hosts on a single Redis and on a cluster of
# 3 masters; then the cores a sale of 10k, 50k, 100k coupons/s needs and which part runs out first;
# its last line one JSON object [STOCK=50000: coupons a setting; QUICK=1: a smoke run, under a minute]
bench-capacity: setup-dev
	$(BIN)/python -m loadtest.bench_capacity $(if $(STOCK),--stock $(STOCK)) $(if $(QUICK),--quick)

# A local Redis Cluster (3 masters, 3 replicas, under instance/cluster/) for trying the service
# on one: prints the REDIS_CLUSTER_NODES to export before `make run`.
cluster: setup-dev
	$(BIN)/python -m loadtest.cluster start

cluster-stop: setup-dev
	$(BIN)/python -m loadtest.cluster stop

# everything made here: the virtualenv, SQLite, logs, metric files, make run's Redis data, reports
clean:
	rm -rf $(VENV) instance/*.db instance/*.db-* instance/*.log instance/logs instance/test-runs instance/prometheus \
		instance/redis instance/cluster \
		reports .pytest_cache .hypothesis
