"""Queue experiments, run them two at a time, and check that MLflow recorded each one apart.

    eval "$(make -s services)"            # or any MLFLOW_TRACKING_URI
    .venv/bin/python scripts/check_queue.py --times 3

Each round queues `--experiments` experiments (`dvc exp run --queue -S
<--param>=<value>`, another value per experiment; default head.learning_rate),
starts `--jobs` queue workers (`dvc queue start -j`), waits for the queue to
empty, then checks the tracking server: every experiment DVC ran has exactly
one MLflow parent run, named after it and holding its own value, whose child
runs are the stages that ran in it, all FINISHED, no child run belongs to
two parents, and with `--jobs` > 1 at least two parent runs overlap in time.
It exits 1 naming the experiment and what is wrong, else prints one line per
round. The project (`--project`, default: here) must be a git repo whose
dvc.lock is committed (the queue runs experiments from the last commit).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from transferkit.tracking.executions import STAGE_TAG, stages_run

from run_queue import dvc, start_and_wait  # scripts/run_queue.py, what `make queue` runs


def same_number(logged: str | None, queued: str) -> bool:
    """MLflow logs params.yaml's value as YAML read it (0.0010 comes back as 0.001)."""
    try:
        return float(logged) == float(queued)
    except (TypeError, ValueError):
        return False


def most_at_once(spans: list[tuple[int, int]]) -> int:
    """The most (start, end) spans open at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def check_records(param: str, names_to_values: dict[str, str], stages_ran: dict[str, list[str]],
                  jobs: int) -> list[str]:
    """What is wrong with the MLflow records of these experiments (nothing: an empty list)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("transferkit")
    if experiment is None:
        return ["no MLflow experiment named transferkit on " + client.tracking_uri]
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    problems: list[str] = []
    children_seen: dict[str, str] = {}
    spans: list[tuple[int, int]] = []
    for name, value in names_to_values.items():
        parents = [r for r in runs if r.info.run_name == name and r.data.tags.get(STAGE_TAG) == "pipeline"]
        if len(parents) != 1:
            problems.append(f"experiment {name}: {len(parents)} MLflow parent runs, not 1")
            continue
        parent = parents[0]
        spans.append((parent.info.start_time, parent.info.end_time or parent.info.start_time))
        if not same_number(parent.data.params.get(param), value):
            problems.append(f"experiment {name}: parent run has {param} {parent.data.params.get(param)}, "
                            f"queued with {value}")
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        for child in children:
            if child.info.run_id in children_seen:
                problems.append(f"child run {child.info.run_id} in both {children_seen[child.info.run_id]} and {name}")
            children_seen[child.info.run_id] = name
            if not same_number(child.data.params.get(param, value), value):
                problems.append(f"experiment {name}: its {child.info.run_name} child has another {param}")
        ran = sorted(c.info.run_name for c in children if "transferkit.restored" not in c.data.tags)
        if ran != sorted(stages_ran[name]):
            problems.append(f"experiment {name}: child runs {ran}, but DVC ran {sorted(stages_ran[name])}")
        not_finished = [f"{r.info.run_name} {r.info.status}" for r in [parent, *children]
                        if r.info.status != "FINISHED"]
        if not_finished:
            problems.append(f"experiment {name}: runs not FINISHED: {not_finished}")
    if jobs > 1 and len(spans) > 1 and most_at_once(spans) < 2:
        problems.append(f"the experiments ran one at a time (their parent runs never overlap), not {jobs} at a time")
    return problems


def stages_in_log(project: Path, name: str) -> list[str]:
    return stages_run(dvc(project, "queue", "logs", name))


def one_round(project: Path, param: str, round_no: int, experiments: int, jobs: int, timeout: float) -> None:
    started = time.time()
    # Small distinct values (a rate, or a bar no model is below), new on every round of every invocation:
    # an experiment whose params DVC has run before is restored from its run-cache, no stage runs, and
    # nothing is recorded in MLflow.
    token = int(started) % 9973 * 1e-9  # under the 2e-5 between rounds
    values = {f"queue-{int(started)}-{i}": f"{0.0005 * (i + 1) + 0.00002 * round_no + token:.9f}"
              for i in range(experiments)}
    for name, value in values.items():
        dvc(project, "exp", "run", "--queue", "--name", name, "-S", f"{param}={value}")
    final = start_and_wait(project, jobs, timeout)
    failed = [name for name in values if final.get(name) != "Success"]
    if failed:
        logs = "\n".join(f"--- {name}\n{dvc(project, 'queue', 'logs', name)[-3000:]}" for name in failed)
        raise SystemExit(f"round {round_no}: experiments failed in DVC's queue: {failed}\n{logs}")
    problems = check_records(param, values, {name: stages_in_log(project, name) for name in values}, jobs)
    if problems:
        raise SystemExit(f"round {round_no}: " + "\n".join(problems))
    print(f"round {round_no}: {experiments} experiments, {jobs} at a time, each its own MLflow parent run "
          f"with its stages ({time.time() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--param", default="head.learning_rate",
                        help="the params.yaml key each experiment sets to its own small value")
    parser.add_argument("--experiments", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--times", type=int, default=1, help="rounds of queue + check")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per round")
    args = parser.parse_args()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise SystemExit("MLFLOW_TRACKING_URI is not set: start the team's tracking server first "
                         "(`eval \"$(make -s services)\"`); parallel experiments are checked where a team records them")
    for round_no in range(1, args.times + 1):
        one_round(args.project.resolve(), args.param, round_no, args.experiments, args.jobs, args.timeout)


if __name__ == "__main__":
    main()
