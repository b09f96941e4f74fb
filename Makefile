# Two commands do all the set-up: `make run` and `make test`. Both install into .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The CPU wheel keeps CI and laptops light; on a GPU node: make install TORCH_SPEC='torch>=2.3'
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Test processes (pytest-xdist; 0: one). Most tests wait on the services, workers and browsers they start, so
# one process keeps about one core busy; two keep both of a 2-core machine busy. Each has a PostgreSQL database
# of its own (tests/conftest.py).
TEST_PROCESSES ?= 2
TEST_SPREAD := --numprocesses $(TEST_PROCESSES) --dist worksteal
# Every dependency but torch at the version the suite passed with; `make lock` rewrites it.
LOCK := requirements.lock
# The peer optimizers of the replay benchmark (SMAC3, DEHB, syne-tune) need numpy 1.26: a venv of their own.
PEERS_VENV ?= .venv-peers
# The newest releases pyproject.toml's ranges allow, in a venv of their own (make test-latest).
LATEST_VENV ?= .venv-latest
# A pin's package name as pip compares names (lower case, '-' for '_' and '.'), its version left alone.
PIN_NAMES := :a; s/^([^=]*)[._]/\1-/; ta; s/^([^=]*)==/\L\1==/

.PHONY: install run test test-latest lock lint typecheck clean bench bench-quick bench-gpu bench-peers peers-venv device-pack readme

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --constraint $(LOCK) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --constraint $(LOCK) -e ".[dev]"
	@# The browser test drives Debian's Chromium (never `playwright install`, which downloads its own build).
	@# Without root or apt-get the test skips locally (and fails in CI), so install does not stop here.
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "chromium is not installed: the dashboard browser test will skip (apt-get install chromium)"
	@# The README's API examples are run as written, with curl and jq.
	command -v curl >/dev/null && command -v jq >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl jq; } \
		|| echo "curl or jq is not installed: the README example tests will skip (apt-get install curl jq)"
	@# The PgBouncer test (a fleet behind transaction pooling) and benchmark 4 run Debian's PgBouncer.
	command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer; } \
		|| echo "pgbouncer is not installed: its test will skip (apt-get install pgbouncer)"
	touch $@

run: install
	$(BIN)/tunefleet demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest $(TEST_SPREAD) $(PYTEST_ARGS)

# The same suite against the newest releases the ranges in pyproject.toml allow: a new Optuna (or transformers,
# SQLAlchemy, ...) shows up here as a failing test, before it reaches a user or the lock. It lists what is newer
# than the lock first, so a failure can be read against what moved.
test-latest:
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	@# torch stays at TORCH_SPEC: an eager upgrade would otherwise fetch the newest torch, a CUDA build of gigabytes.
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]" "$(TORCH_SPEC)"
	@$(LATEST_VENV)/bin/pip freeze --all --exclude-editable | sed -E "$(PIN_NAMES)" | LC_ALL=C sort -t= -k1,1 >$(LATEST_VENV)/newest.txt
	@grep '==' $(LOCK) | sed -E "$(PIN_NAMES)" | LC_ALL=C sort -t= -k1,1 >$(LATEST_VENV)/locked.txt
	@echo "newer than $(LOCK):"; LC_ALL=C join -t= -o 1.1,1.3,2.3 $(LATEST_VENV)/locked.txt $(LATEST_VENV)/newest.txt \
		| awk -F= '$$2 != $$3 {print "  " $$1 " " $$2 " -> " $$3; n++} END {if (!n) print "  nothing"}'
	$(LATEST_VENV)/bin/python -m pytest $(TEST_SPREAD) $(PYTEST_ARGS)

# Rewrite the lock from pyproject.toml's ranges (the newest releases they allow), then run `make test` against it.
# torch and its CUDA-only dependencies stay out: TORCH_SPEC picks the build (the CPU wheel here, CUDA on GPU nodes).
lock: install
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --upgrade --extra dev --strip-extras \
		--no-annotate --no-emit-index-url --no-emit-find-links --unsafe-package torch --output-file $(LOCK) pyproject.toml
	sed -i -E '/^(nvidia-|cuda-|triton==)/d' $(LOCK)

# Benchmarks measure; tests never assert times. Each script prints its table and writes bench/results/*.json
# (kept in git: the raw figures behind BENCHMARKS.md); bench/write_report.py gathers them into BENCHMARKS.md
# with the machine, versions and commands.
BENCHES := time_to_good_model early_stopping coordination_overhead claim_phases trial_api_overhead finetune_throughput store_scale

bench: install
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b || exit 1; done
	$(BIN)/python -m bench.write_report

bench-quick: install
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b --quick || exit 1; done
	$(BIN)/python -m bench.write_report

# The replay benchmark's peers: the surrogate exported as arrays (tunefleet's venv), SMAC3, DEHB and syne-tune run
# on it with numpy alone (their venv), then merged into the replay report beside tunefleet's runs.
peers-venv: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet -r bench/peers/requirements.txt
	touch $@

REPLAY_TASKS = bbc-news-minilm tweets-sentiment-minilm mlp-bbc-news rotten-tomatoes-minilm

bench-peers: install peers-venv
	for task in $(REPLAY_TASKS); do \
		$(BIN)/python -m bench.peers.export --task $$task \
		&& $(PEERS_VENV)/bin/python -m bench.peers.run --model .peers/$$task.npz \
		&& $(BIN)/python -m bench.replay.benchmark --task $$task --runs-from bench/results/replay-$$task.json \
			--peers bench/results/replay-peers-$$task.json --svg docs/images/replay-$$task.svg || exit 1; \
	done
	$(BIN)/python -m bench.write_report

# On a GPU node: fine-tuning throughput on the GPU (head, last-k, and full with bf16 autocast and MFU),
# into its own results file so the CPU figures stay.
bench-gpu: install
	$(BIN)/python -m bench.finetune_throughput --device cuda --out bench/results/finetune_throughput_gpu.json
	$(BIN)/python -m bench.write_report

# For a GPU machine without network access: pack what the GPU checks need into .device/ here, copy the
# checkout with .device/ there and run bench/device_check.sh (the script's header says how).
device-pack: install
	$(BIN)/python -m bench.device_pack

# README.md's block of the study spec's defaults, written from studies/spec.py (tests/unit/test_spec.py fails when
# the two disagree).
readme: install
	$(BIN)/python -m tunefleet.spec_defaults README.md

lint: install
	$(BIN)/ruff check studies service worker tunefleet tests
	$(BIN)/ruff format --check studies service worker tunefleet tests

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(PEERS_VENV) .pytest_cache .mypy_cache .ruff_cache
