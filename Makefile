# session-audit — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# Endpoints of the stack `make run` started, for commands run beside it.
LOAD_ENDPOINTS := set -a; if [ -z "$${NATS_URL:-}" ] && [ -f .data/endpoints.env ]; then . ./.data/endpoints.env; fi; set +a

.DEFAULT_GOAL := help
.PHONY: help install run test lint format migrate publish-sample dlq verify bench docs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

install: $(VENV)/.synced ## install the locked dependencies into .venv (uv, from uv.lock)

run: install ## run the service; embedded NATS + PostgreSQL under .data/ unless NATS_URL/DATABASE_URL are set
	$(BIN)/python -m service.dev.run

test: install ## run every test against real servers the tests start themselves
	$(BIN)/pytest

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check service tests migrations bench
	$(BIN)/ruff format --check service tests migrations bench
	$(BIN)/mypy service bench

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix service tests migrations bench
	$(BIN)/ruff format service tests migrations bench

migrate: install ## bring the database at DATABASE_URL to the newest schema (as its owner)
	$(BIN)/alembic upgrade head

publish-sample: install ## publish realistic session-end events to the running stack (COUNT=20, ARGS=--poison)
	@$(LOAD_ENDPOINTS); $(BIN)/python -m service publish-sample --count $${COUNT:-20} $(ARGS)

dlq: install ## the dead-letter tool on the running stack: ARGS="list", "show SEQ", "replay …", "--help"
	@$(LOAD_ENDPOINTS); $(BIN)/python -m service dlq $(or $(ARGS),--help)

verify: install ## check the audit trail of the stack `make run` started, with its key (ARGS="--json", "--since SEQ")
	@set -a; if [ -f .data/endpoints.env ]; then . ./.data/endpoints.env; DATABASE_URL=$$VERIFIER_DATABASE_URL; fi; set +a; \
	  $(BIN)/python -m service trail verify $(ARGS)

bench: install ## measure ceiling, baseline, drain, encryption, trail, replicas, latency; table + bench-results/latest.json (ARGS=--quick)
	$(BIN)/python -m bench $(ARGS)

docs: install ## write docs/asyncapi.yaml, the AsyncAPI document the service serves
	@mkdir -p docs
	env -i PATH="$$PATH" NATS_URL=nats://nats:4222 STREAM=DEVICE_EVENTS DLQ_STREAM=AUDIT_DLQ \
	  DURABLE=session-audit-writer LOG_LEVEL=WARNING $(BIN)/python -m service.dev.asyncapi docs/asyncapi.yaml

clean: ## remove .venv, .tools and the local data in .data/
	rm -rf $(VENV) $(TOOLS) .data
