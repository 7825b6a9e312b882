"""Run the experiments queued with `dvc exp run --queue`, --jobs at a time, and wait for them (`make queue`).

`dvc queue start` starts its workers as `dvc` from PATH, which a fresh shell
does not have (they then fail in the background, and dvc still says "Started
1 worker"): this puts the venv's `dvc` first on PATH, starts the workers,
waits until every experiment that was queued or running has finished, prints
`dvc queue status`, and exits 1 naming the experiments that failed. An
experiment left `Running` by a worker that died is first marked failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's dvc
WAITING = ("Queued", "Running")
NO_WORKER_GRACE = 60  # s a worker may take to come up and take a task (1-5 s measured on 2 cores)


def venv_env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc(project: Path, *args: str, timeout: float = 600) -> str:
    out = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=venv_env(), capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode:
        raise SystemExit(f"dvc {' '.join(args)} failed ({out.returncode}) in {project}:\n{out.stdout}{out.stderr}")
    return out.stdout


def queue_status(project: Path) -> dict[str, tuple[str, str]]:
    """task rev -> (experiment name, or the rev when unnamed; Queued / Running / Success / Failed).

    Keyed by rev: a failed experiment queued again under its name is a second task."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {task["rev"]: (task.get("name") or task["rev"][:7], task["status"])
                for task in repo.experiments.celery_queue.status()}


def workers(project: Path) -> int:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return len(repo.experiments.celery_queue.worker_status())


def any_worker(project: Path, readings: int = 3) -> bool:
    """A busy worker can miss celery's 1 s ping: no answer to `readings` pings 5 s apart means no worker."""
    for reading in range(readings):
        if workers(project):
            return True
        if reading < readings - 1:
            time.sleep(5)
    return False


def fail_orphans(project: Path, status: dict[str, tuple[str, str]]) -> None:
    """Mark failed the experiments shown Running that no worker runs: their worker died (killed, or the
    machine restarted), and DVC would show them Running for ever (treeverse/dvc#8702)."""
    running = {rev for rev, (_, state) in status.items() if state == "Running"}
    if not running or any_worker(project):
        return
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        queue = repo.experiments.celery_queue
        # What `dvc queue kill` does for a task whose process is gone, without signalling a pid that may
        # since belong to another process.
        queue._mark_inactive_tasks_failure({entry: entry.stash_rev for entry in queue.iter_active()
                                            if entry.stash_rev in running})
    names = ", ".join(sorted(status[rev][0] for rev in running))
    print(f"marked failed: {names} (shown Running, but no worker runs them: their worker was stopped or the "
          f"machine restarted); queue them again with `.venv/bin/dvc exp run --queue -S ...`", flush=True)


def start_and_wait(project: Path, jobs: int, timeout: float = 24 * 3600) -> dict[str, str]:
    """Start `jobs` workers; once every waiting experiment has finished: name -> Success / Failed."""
    fail_orphans(project, queue_status(project))
    names = {rev: name for rev, (name, state) in queue_status(project).items() if state in WAITING}
    if not names:
        return {}
    # Not through pipes: the workers dvc leaves running inherit its stdout and stderr, so reading them
    # to the end would wait until the last experiment has finished.
    with tempfile.TemporaryFile("w+") as log:
        start = subprocess.run([str(BIN / "dvc"), "queue", "start", "-j", str(jobs)], cwd=project, env=venv_env(),
                               stdout=log, stderr=subprocess.STDOUT, timeout=600)
        log.seek(0)
        said = log.read()
    if start.returncode:
        raise SystemExit(f"dvc queue start failed ({start.returncode}) in {project}:\n{said}")
    print(said.strip(), flush=True)
    started, no_worker_seen = time.time(), 0
    while True:
        status = queue_status(project)
        now = {rev: status[rev][1] if rev in status else "removed" for rev in names}
        left = [names[rev] for rev, state in now.items() if state in WAITING]
        if not left:
            return {names[rev]: state for rev, state in now.items()}
        if time.time() - started > timeout:
            raise SystemExit(f"the queue did not finish within {timeout:.0f} s; still waiting: {', '.join(left)}")
        # A busy worker can miss celery's 1 s ping, and the last one stops itself once the queue is empty:
        # give up only after three readings 5 s apart with no worker and experiments still waiting.
        no_worker_seen = no_worker_seen + 1 if time.time() - started > NO_WORKER_GRACE and not workers(project) else 0
        if no_worker_seen >= 3:
            raise SystemExit(f"no queue worker runs, yet {len(left)} experiments wait ({', '.join(left)}); "
                             f"the workers' logs: {project / '.dvc' / 'tmp' / 'exps' / 'celery'}")
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--jobs", type=int, default=1, help="experiments at a time")
    args = parser.parse_args()
    project = args.project.resolve()
    final = start_and_wait(project, args.jobs)
    print(dvc(project, "queue", "status"), end="")
    failed = [name for name, status in final.items() if status != "Success"]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(final)} experiments failed: {', '.join(failed)}; "
                         f"see why with `.venv/bin/dvc queue logs <name>`")
    print(f"{len(final)} experiments finished" if final else "no experiment was queued")


if __name__ == "__main__":
    main()
