# ray-tfserving: `make run` serves the default model, `make test` runs the whole suite.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_BASE ?= models/deeplab
# `make run VERBOSE=1` shows everything TensorFlow and Ray print; by default one line per step.
ifdef VERBOSE
QUIET :=
RUN_FLAGS := --verbose
else
QUIET := $(BIN)/python -m compat.console
RUN_FLAGS :=
endif

.PHONY: install system-deps client-venvs run model test lint bench loadtest clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,load]"
	touch $@

# System tools the benchmark and its tests use: h2load (nghttp2's C load generator). Installed
# with apt-get when missing and run as root (CI); otherwise the benchmark uses its Python client.
system-deps:
	@if command -v h2load >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; \
	else echo "h2load not found: apt-get install nghttp2-client (the benchmark falls back to Python)"; fi

# Third-party clients the tests drive, each in a virtual environment of its own as a user has
# it: tritonclient needs protobuf 6, beside our protobuf 7.
CLIENTS := .venv-clients
TRITONCLIENT ?= tritonclient[grpc,http]==2.73.0
client-venvs: $(CLIENTS)/triton/.installed

$(CLIENTS)/triton/.installed:
	test -x $(CLIENTS)/triton/bin/python || $(PYTHON) -m venv $(CLIENTS)/triton
	$(CLIENTS)/triton/bin/python -m pip install -q "$(TRITONCLIENT)"
	touch $@

# Export the default DeepLab model (trained on synthetic images, ~1.5 min) unless a version exists.
model: install
	@if ls $(MODEL_BASE)/*/saved_model.pb >/dev/null 2>&1; then \
		echo "Using the existing model in $(MODEL_BASE)"; \
	else \
		$(QUIET) $(BIN)/python -m export --base-path $(MODEL_BASE) --version 1; \
	fi

# The CLI: an embedded Ray bound to loopback, TF Serving's ports, Ctrl-C ends everything.
run: model
	$(BIN)/ray-tfserving --model_name=deeplab --model_base_path=$(MODEL_BASE) --port=8500 --rest_api_port=8501 $(RUN_FLAGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy compat serve_app export loadtests

# The tests without a server first, shuffled (each passes alone and in any order), then the
# live ones; every test is one or the other (tests/markers.py).
test: system-deps client-venvs lint
	$(BIN)/python -m pytest -q -rs -m unit --random-order
	$(BIN)/python -m pytest -q -rs -m live

bench: install
	$(BIN)/python -m loadtests.bench --out results/bench

loadtest: install
	$(BIN)/python -m loadtests.run --users 8 --seconds 20 --model deeplab --out results/locust

clean:
	rm -rf $(VENV) $(CLIENTS) models results .pytest_cache .mypy_cache .ruff_cache
