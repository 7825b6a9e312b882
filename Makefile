# `make run`: set-up + the whole pipeline on the embedded sample data.
# `make test`: set-up + the whole test suite.
# `make bench`: set-up + the speed benchmarks in benchmarks/ (about 20 minutes on 2 cores;
# bench_quality.py, an hour or more, is run on its own: see benchmarks/README.md).
# Each makes its own .venv first; the install is skipped when pyproject.toml
# and requirements.lock have not changed since the last one.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The venv's python, dvc and mlflow first on PATH, so dvc.yaml's `python` is ours.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# No usage reports from the tools we drive.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install run test bench ui lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip==26.3"
	# requirements.lock pins every transitive package: the same set on every machine.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test]"
	touch $(STAMP)

run: install
	dvc repro
	@$(BIN)/python -c "import json; m = json.load(open('metrics/evaluate.json')); \
	print(f\"test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ({m['test_images']} test images)\")"

test: install
	$(BIN)/python -m pytest

# Each benchmark prints its figures and, on its last line, its ratio (see benchmarks/README.md).
BENCHMARKS := extract_efficiency cached_head incremental memory machine_limit rerun finetune_throughput
bench: install
	@set -e; for name in $(BENCHMARKS); do echo; $(BIN)/python benchmarks/bench_$$name.py; done

# The MLflow UI on this machine only: http://127.0.0.1:5000
ui: install
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# Re-pin every transitive dependency after changing pyproject.toml.
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -vi '^transferkit' > requirements.lock

clean:
	rm -rf data/prepared data/features models plots metrics .checkpoints
