# ray-tfserving: `make run` serves the default model, `make test` runs the whole suite.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_BASE ?= models/deeplab

.PHONY: install run model test lint bench loadtest clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,load]"
	touch $@

# Export the default DeepLab model (trained on synthetic images, ~1.5 min) unless a version exists.
model: install
	@if ls $(MODEL_BASE)/*/saved_model.pb >/dev/null 2>&1; then \
		echo "Using the existing model in $(MODEL_BASE)"; \
	else \
		$(BIN)/python -m export --base-path $(MODEL_BASE) --version 1; \
	fi

run: model
	$(BIN)/serve run serve_app:app

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy compat serve_app export loadtests

test: lint
	$(BIN)/python -m pytest -q -rs

bench: install
	$(BIN)/python -m loadtests.bench --out results/bench

loadtest: install
	$(BIN)/python -m loadtests.run --users 8 --seconds 20 --model deeplab --out results/locust

clean:
	rm -rf $(VENV) models results .pytest_cache .mypy_cache .ruff_cache
