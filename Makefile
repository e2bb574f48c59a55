# Shortcuts; each target is one command a user could type.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup repro test test-unit test-integration bench clean-outputs

setup:            ## create .venv and install everything (pinned by constraints.txt)
	scripts/setup.sh

repro:            ## the whole pipeline on params.yaml (offline default: SmolLM2-135M)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: test-unit test-integration   ## what CI runs

test-unit:        ## fast unit tests (default selection)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

test-integration: ## tiny models, DeepSpeed, real services, the tiny pipeline
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m integration

bench:            ## quick runs of every benchmark on a tiny model
	for b in bench/*.py; do $(BIN)/python $$b --model tiny-random-llama || exit 1; done
