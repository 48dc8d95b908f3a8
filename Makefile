# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv when missing, installs what is needed and, as root with apt, the
# Debian Fashion-MNIST package.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cdca-installed
EXTRAS ?= cloud,device,flower,dev
DATA := data/fashion-mnist-c

.PHONY: demo test test-slow lint setup fashion-mnist clean-venv

demo: setup fashion-mnist
	$(BIN)/cdca data prepare --out $(DATA)
	$(BIN)/cdca simulate --data $(DATA) --out runs/demo

test: setup fashion-mnist
	$(BIN)/python -m pytest

# The long tests the default suite leaves out (CI runs them after `make test`).
test-slow: setup fashion-mnist
	$(BIN)/python -m pytest -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

setup: $(STAMP)

# Re-install whenever pyproject.toml changes. torch and torchvision are pinned to the
# releases this kind of machine keeps on disk (CPU-only users elsewhere can pre-install a
# CPU build of the same versions; pip then keeps it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "note: Debian package dataset-fashion-mnist not installed; cdca will look in \$$CDCA_DATA or download"; \
	fi

clean-venv:
	rm -rf $(VENV)
