# `make demo` and `make test` each create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# two pytest-xdist workers, one test file each at a time (a file's fixtures stay in one worker):
# 17 min on 2 cores against 28 min in one process. `make test PYTEST_WORKERS=` runs serially.
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: install demo test lint bench clean wheel-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/slimp demo --out demo-out

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra $(PYTEST_WORKERS) tests

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/embed.py
	$(BIN)/python benchmarks/search.py --pool 100000 --queries 2000
	$(BIN)/python benchmarks/pretrain.py --patients 120 --steps 12

# Build the wheel, install it (not editable) into a fresh venv and ingest the shared PAD
# subset with it: what a user of `pip install slimp-*.whl` gets (built-in schemas included).
SLIMP_SHARED_DATA ?= ../shared/data
WHEEL_DIR  := build/wheel-check
wheel-check: $(STAMP)
	rm -rf $(WHEEL_DIR)
	$(BIN)/pip wheel -q --no-deps -w $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/pip install -q $(WHEEL_DIR)/dist/slimp-*.whl
	cd $(WHEEL_DIR) && env -u PYTHONPATH venv/bin/python -c \
	  "import slimp_cli, sys; assert 'site-packages' in slimp_cli.__file__, slimp_cli.__file__"
	cd $(WHEEL_DIR) && env -u PYTHONPATH venv/bin/slimp --version
	cd $(WHEEL_DIR) && env -u PYTHONPATH venv/bin/slimp ingest pad-ufes-20 \
	  "$(abspath $(SLIMP_SHARED_DATA))/pad_ufes_20" pad --image-size 32 --workers 2
	test -s $(WHEEL_DIR)/pad/schema.json && test -s $(WHEEL_DIR)/pad/manifest.json
	rm -rf $(WHEEL_DIR)/venv
	@echo "wheel-check: the installed wheel ingested the PAD subset"

clean:
	rm -rf $(VENV) demo-out .pytest_cache build dist

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
