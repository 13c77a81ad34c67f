# llm-fleet: the two commands a new user needs are `make up` and `make test`.
VENV    := .venv
FLEET   := $(VENV)/bin/fleet
PYTHON  := $(VENV)/bin/python
SPEC    ?=
SPECARG := $(if $(SPEC),--spec $(SPEC),)

.PHONY: up down test test-fast test-e2e lint install install-dev status peers

## up: install what is missing, start the default cluster, prove it answers
up: install
	$(FLEET) model prepare $(SPECARG)
	$(FLEET) up $(SPECARG)
	$(FLEET) chat $(SPECARG) "In one sentence, what is a GPU?"

## down: stop every process of the cluster
down:
	$(FLEET) down $(SPECARG)

status:
	$(FLEET) status $(SPECARG)

## test: install test needs and run the whole suite (lint, unit, integration, e2e)
test: install-dev
	$(VENV)/bin/ruff check router tests
	$(VENV)/bin/mypy
	$(FLEET) model prepare --engine cpu
	$(PYTHON) -m pytest -q -ra tests

test-fast: install-dev
	$(PYTHON) -m pytest -q -ra -m "not e2e" tests

test-e2e: install-dev
	$(FLEET) model prepare --engine cpu
	$(PYTHON) -m pytest -q -ra -m e2e tests

lint: install-dev
	$(VENV)/bin/ruff check router tests
	$(VENV)/bin/mypy

install:
	deploy/setup.sh

## peers: vllm-router and LiteLLM's proxy, for `fleet bench scenario` (own virtualenv)
peers:
	deploy/install-peers.sh

install-dev:
	deploy/setup.sh --dev
