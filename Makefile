# gamestream: the two commands of the README, and a few helpers.
#
#   make run    bring up Postgres, Redis and Kafka, migrate, create topics, run the daemon
#   make test   bring up the stack if needed and run the whole test suite
#
# Both install what is missing through deploy/local/stack.sh, idempotently: apt-get for
# Postgres, Redis, Java and Maven; Maven for Apache Kafka 4.1.1 (deploy/local/kafka.sh;
# with STACK_KAFKA=tansu, cargo install for tansu instead).
#
# The broker outlives `make run`: Ctrl-C ends the daemon, not the stack (its services
# run in their own sessions), and a later `make test` uses the same broker. Tests make
# their own topics, groups and databases, so what a dev run left there does not matter.

SHELL := /usr/bin/env bash
STACK := deploy/local/stack.sh
# One target dir for every build of this checkout (tests, benches, the daemon).
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: run test stack-up stack-down stack-status build lint bench fuzz

run:
	@# Apache Kafka keeps a dev run's events on disk anyway; STACK_KAFKA_STORAGE only
	@# applies to STACK_KAFKA=tansu, whose default storage (memory) would not.
	STACK_KAFKA_STORAGE=$${STACK_KAFKA_STORAGE:-sqlite} $(STACK) up
	cargo build --release --bin gamestream
	eval "$$($(STACK) env)" && \
	  $(CARGO_TARGET_DIR)/release/gamestream migrate && \
	  $(CARGO_TARGET_DIR)/release/gamestream topics create && \
	  exec $(CARGO_TARGET_DIR)/release/gamestream serve

test:
	$(STACK) up
	@# The deploy-manifest tests render the kustomize overlays; without kubectl they use
	@# deploy/tools/kustomize_lite.py, which needs PyYAML.
	python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml
	@# nextest runs every test in its own process: the suites of the one test binary
	@# (tests/it) each install a global metrics recorder and tracing subscriber.
	cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
	eval "$$($(STACK) env)" && cargo nextest run --all-targets --no-fail-fast

# The long fuzz run (README "Fuzzing"); `make test` replays the corpus instead.
FUZZ_SECONDS ?= 300
fuzz:
	cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
	@# RUSTC_BOOTSTRAP: the stable toolchain takes cargo-fuzz's unstable flags (no nightly here).
	cd fuzz && for target in parse_submission parse_record batch_body; do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

stack-up:
	$(STACK) up
stack-down:
	$(STACK) down
stack-status:
	$(STACK) status
