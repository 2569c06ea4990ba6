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

.PHONY: install lock system-deps client-venvs run model test lint bench bench-autoscale loadtest clean

install: $(VENV)/.installed

# Installs come from the locks in requirements/ (hashed, `make lock` writes them): every package at
# the version CI tested, each file checked against its hash. pip first, then the project's
# dependencies with its test and load extras (main.txt), then the project itself (editable, built
# by the pinned setuptools of build.txt).
LOCKS := requirements
$(VENV)/.installed: pyproject.toml $(LOCKS)/pip.txt $(LOCKS)/main.txt $(LOCKS)/build.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCKS)/pip.txt
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCKS)/main.txt
	$(BIN)/python -m pip install -q --no-deps --build-constraint $(LOCKS)/build.txt -e .
	touch $@

# Regenerate the locks with uv's pip compile (in a venv of its own), for Linux x86_64 and Python
# 3.11 whatever machine runs it. Pins already in a lock stay unless pyproject.toml or a
# requirements/*.in file needs otherwise; `make lock UPGRADE=1` takes the newest releases.
# gcs.txt and gpu.txt are main.txt plus that extra, at main.txt's pins.
LOCK_VENV := .venv-lock
UV ?= uv==0.13.9
COMPILE = $(LOCK_VENV)/bin/uv pip compile -q --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock" \
	$(if $(UPGRADE),--upgrade)
lock:
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --require-hashes -r $(LOCKS)/pip.txt
	$(LOCK_VENV)/bin/python -m pip install -q "$(UV)"
	$(COMPILE) -o $(LOCKS)/pip.txt $(LOCKS)/pip.in
	$(COMPILE) -o $(LOCKS)/build.txt $(LOCKS)/build.in
	$(COMPILE) -o $(LOCKS)/main.txt --extra test --extra load pyproject.toml
	$(COMPILE) -o $(LOCKS)/gcs.txt --extra test --extra load --extra gcs -c $(LOCKS)/main.txt pyproject.toml
	$(COMPILE) -o $(LOCKS)/gpu.txt --extra test --extra load --extra gpu -c $(LOCKS)/main.txt pyproject.toml
	$(COMPILE) -o $(LOCKS)/triton.txt $(LOCKS)/triton.in

# System tools the benchmark and its tests use: h2load (nghttp2's C load generator) and
# redis-server (the external store of Ray's GCS fault tolerance, tests/serve_app/
# test_node_faults.py). Installed with apt-get when missing and run as root (CI); otherwise the
# benchmark uses its Python client and the GCS fault test fails, saying what to install.
system-deps:
	@if command -v h2load >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; \
	else echo "h2load not found: apt-get install nghttp2-client (the benchmark falls back to Python)"; fi
	@if command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	else echo "redis-server not found: apt-get install redis-server (tests/serve_app/test_node_faults.py)"; fi

# Third-party clients the tests drive, each in a virtual environment of its own as a user has
# it: tritonclient needs protobuf 6, beside our protobuf 7. Its lock: requirements/triton.txt.
CLIENTS := .venv-clients
client-venvs: $(CLIENTS)/triton/.installed

$(CLIENTS)/triton/.installed: $(LOCKS)/pip.txt $(LOCKS)/triton.txt
	test -x $(CLIENTS)/triton/bin/python || $(PYTHON) -m venv $(CLIENTS)/triton
	$(CLIENTS)/triton/bin/python -m pip install -q --require-hashes -r $(LOCKS)/pip.txt
	$(CLIENTS)/triton/bin/python -m pip install -q --require-hashes -r $(LOCKS)/triton.txt
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

bench-autoscale: install
	$(BIN)/python -m loadtests.bench.autoscale --out results/bench

loadtest: install
	$(BIN)/python -m loadtests.run --users 8 --seconds 20 --model deeplab --out results/locust

clean:
	rm -rf $(VENV) $(CLIENTS) $(LOCK_VENV) models results .pytest_cache .mypy_cache .ruff_cache
