"""What every stage script does around its work: quiet TF logs, clean errors, and one way to record it.

A TransferkitError (bad data, bad params, missing input) is printed as one
message and exits 1: no stack trace for problems the user can fix.

A stage script only parses its arguments and calls `run_stage` with its stage
function: the runner opens the stage's MLflow run, calls the function, and
records the StageResult it returns the same way for every stage (results.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def quiet_tensorflow() -> None:
    """TF's C++ start-up chatter (oneDNN, CPU features) hides the real output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def no_usage_reports() -> None:
    """Pipelines often run offline: no usage-report calls home (a user can still set these)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


# Error-level lines TensorFlow prints that are not errors. Each is filtered by its text, so
# every other message, real errors included, still reaches the terminal at its usual level.
HARMLESS_STDERR = (
    # tf.data in TF 2.21, on every Keras fit(): an option its own graph rewriter adds and
    # its kernel does not declare ("NodeDef mentions attribute use_unbounded_threadpool ...").
    b"use_unbounded_threadpool",
)


def filter_stderr(harmless: tuple[bytes, ...] = HARMLESS_STDERR) -> None:
    """Drop lines containing `harmless` from this process's stderr, C++ output included (fd 2)."""
    import atexit
    import threading

    sys.stderr.flush()
    terminal = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb") as source:
            for line in source:
                if not any(text in line for text in harmless):
                    os.write(terminal, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:  # at exit: give fd 2 back, let the pump forward the last lines
        sys.stderr.flush()
        os.dup2(terminal, 2)
        thread.join(timeout=2)

    atexit.register(restore)


def run_script(main: Callable[[], None], stage: str) -> None:
    """What a stage script runs under: quiet TensorFlow, no usage reports, a TransferkitError as one line (exit 1)."""
    from transferkit.errors import TransferkitError
    from transferkit.seeding import pin_threads_at_start

    quiet_tensorflow()
    no_usage_reports()
    pin_threads_at_start()  # every stage's TensorFlow, evaluate's and export's too: results do not follow the cores
    filter_stderr()
    try:
        main()
    except TransferkitError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; completed work is kept, a rerun continues from it", file=sys.stderr)
        sys.exit(130)


def parser(description: str):
    """The arguments every stage takes: its params file and the local MLflow store (from dvc.yaml)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--mlflow-db", required=True, help="local MLflow store (sqlite file), relative to the repo root; "
                   "used unless MLFLOW_TRACKING_URI is set")
    p.add_argument("--mlflow-artifacts", required=True, help="artifact folder of the local MLflow store")
    return p


def run_stage(stage: str, args, work: Callable, *, metrics: str | None = None, record: bool = True) -> None:
    """Run `work(params, tracker)` inside the stage's MLflow run (tracking.runs.StageRun) and record the
    StageResult it returns.

    metrics: the stage's metrics file (dvc.yaml `metrics:`), written before any gate can fail the stage.
    record: False on a fine-tuning worker other than the chief: it trains, and writes and logs nothing."""
    from transferkit.config import load_params
    from transferkit.files import write_json

    if not record:
        work(load_params(args.params), None)
        return
    params, tracking = tracked(stage, args)
    with tracking as tracker:
        result = work(params, tracker)
        for line in result.lines():
            print(f"{stage}: {line}", flush=True)
        if metrics is not None:
            write_json(metrics, result.metrics_file())
        tracker.log_metrics(result.run_metrics())
        if result.run_params():
            tracker.log_params(result.run_params())
        if result.parent_metrics():
            tracker.log_metrics(result.parent_metrics(), parent=True)
        if metrics is not None and result.metrics_to_parent:
            tracker.log_artifact(metrics, parent=True)
        for attachment in result.attachments():
            tracker.log_artifact(attachment.path, attachment.folder, parent=attachment.parent)
        result.check()
        for line in result.finish(tracker):
            print(f"{stage}: {line}", flush=True)


def tracked(stage: str, args):
    """(params, StageRun) for a stage, from its parsed arguments."""
    from transferkit.config import load_params
    from transferkit.tracking.runs import StageRun
    from transferkit.tracking.server import LocalStore

    params = load_params(args.params)
    # The manifest a stage reads (prepare: writes) is the run's dataset in MLflow.
    return params, StageRun(stage, params, LocalStore(args.mlflow_db, args.mlflow_artifacts),
                            manifest=getattr(args, "manifest", None))
