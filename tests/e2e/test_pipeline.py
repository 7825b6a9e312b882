"""End to end: the real `dvc repro` / `dvc exp run` on tiny data, real MLflow store and server.

The repo's tracked files are copied into a fresh git repo in a temporary
folder, with a tiny image dataset and tiny sizes in params.yaml, so the whole
pipeline runs in a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from transferkit.tracking.executions import stages_run

from browser import console_errors
from conftest import REPO, draw_example, free_port
from messy_data import OK, UNICODE_CLASS, add_messy_files
from servers import post_json, wait_until_up
from tiny_project import BIN, STAGES, commit_all, make_tiny_project, sh

pytestmark = pytest.mark.e2e

MESSY: dict[str, str] = {}  # filled by the project fixture: messy file -> expected outcome


def system_path() -> str:
    """PATH as a fresh shell has it: without the venv running the tests (make puts it first)."""
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and Path(p).resolve() != BIN.resolve())


def readme_line(start: str) -> str:
    """The README's command line that starts with `start`, without its comment."""
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(start):
            return line.split("#", 1)[0].strip()
    raise AssertionError(f"README.md has no line starting with {start!r}")


@pytest.fixture(scope="module")
def env() -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    environ["PATH"] = f"{BIN}{os.pathsep}{environ['PATH']}"
    environ.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", TF_CPP_MIN_LOG_LEVEL="2")
    return environ


@pytest.fixture(scope="module")
def project(tmp_path_factory, env) -> Path:
    root = tmp_path_factory.mktemp("project")
    images = make_tiny_project(root)
    # Real folders are messy: broken, odd and unusual files ride along through every stage.
    MESSY.update(add_messy_files(images, broken_symlink=False))
    commit_all(root, "tiny project")
    # As `make` leaves a clone: its .venv (git ignores it), here the one running the tests.
    (root / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def first_run(project, env) -> subprocess.CompletedProcess:
    return sh(["dvc", "repro"], project, env)


def test_full_pipeline_produces_model_metrics_and_plots(project, first_run, env):
    assert stages_run(first_run.stdout) == STAGES
    assert "images/s" in first_run.stderr  # extract reports throughput
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics
    assert metrics["gain_over_baseline"] == metrics["accuracy"] - metrics["baseline_accuracy"]  # evaluate.baseline
    assert "evaluate: baseline: " in first_run.stdout
    assert set(metrics["per_class"]) == {"circle", "square", "triangle", UNICODE_CLASS}
    report = json.loads((project / "data" / "prepared" / "report.json").read_text())
    listed = {r["path"].removeprefix("data/tiny/"): r["reason"] for r in report["rejected"] + report["skipped"]}
    assert set(listed) == {name for name, outcome in MESSY.items() if outcome != OK}
    assert "Traceback" not in first_run.stdout + first_run.stderr
    for name in ("confusion.png", "calibration.png", "curves.png", "confusion.csv", "train_head.csv", "finetune.csv",
                 "errors.html"):
        assert (project / "plots" / name).stat().st_size > 0, name
    assert (project / "models" / "model.keras").exists()
    for name in ("saved_model/saved_model.pb", "model.tflite", "model.onnx", "model.onnx.json", "web/index.html",
                 "web/model.onnx", "web/ort-wasm-simd-threaded.wasm"):
        assert (project / "models" / "export" / name).exists(), name
    parity = json.loads((project / "metrics" / "export.json").read_text())["artifacts"]
    assert set(parity) == {"saved_model", "litert", "onnx"} and all(f["max_abs_diff"] <= 1e-4 for f in parity.values())
    extracted = json.loads((project / "metrics" / "extract.json").read_text())
    assert set(extracted) == {"distinct_images", "computed", "reused"}
    assert "use_unbounded_threadpool" not in first_run.stderr  # TF's harmless error-level line is filtered
    assert not (project / "data" / "prepared" / "classes.json").exists()
    shown = sh(["dvc", "metrics", "show", "--json"], project, env).stdout
    assert "macro_f1" in shown


def test_mlflow_has_parent_and_child_runs(project, first_run):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("transferkit")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("transferkit.stage") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(STAGES)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["head.learning_rate"] == "0.001"
    assert parent.data.params["backbone.image_size"] == "32"
    assert {"test_accuracy", "test_baseline_accuracy", "test_gain_over_baseline"} <= set(parent.data.metrics)
    head_run = next(r for r in children if r.info.run_name == "train_head")
    assert len(client.get_metric_history(head_run.info.run_id, "val_loss")) >= 2  # a curve, not a point
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/confusion.png", "plots/errors.html"} <= artifacts
    versions = client.search_model_versions("name='transferkit'")
    assert versions and versions[0].run_id == parent.info.run_id
    assert "export.onnx.max_abs_diff" in parent.data.metrics
    # The UI opens the experiment on its training runs; each parent shows its dataset and its source.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (dataset,) = [d.dataset for d in parent.inputs.dataset_inputs]
    assert dataset.name == "prepared manifest" and dataset.digest
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    deadline = time.time() + 60  # the execution's watcher records the final dvc.lock once dvc has ended
    while client.get_run(parent.info.run_id).data.tags.get("dvc.lock.sha256") is None and time.time() < deadline:
        time.sleep(1)
    lock = hashlib.sha256((project / "dvc.lock").read_bytes()).hexdigest()
    assert client.get_run(parent.info.run_id).data.tags["dvc.lock.sha256"] == lock


# What the MLflow UI shows in place of a page when something failed (strings of its 3.17 bundle).
UI_ERRORS = ("Something went wrong", "An error occurred", "Page Not Found", "does not exist", "Error loading",
             "Failed to load", "Request error", "Oops")
TEST_OUTPUT = REPO / "test-output"  # git-ignored: screenshots for a person to look at


def ui_page(driver, url: str, ready, shot: str, focus: str | None = None, timeout: float = 120) -> str:
    """Open `url`, wait until the page's text satisfies `ready` (or shows an error), scroll the element whose
    text is `focus` into view, screenshot the page into TEST_OUTPUT/`shot`; returns the page's text, having
    checked it shows no error."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text(d) -> str:
        return d.execute_script("return document.body ? document.body.innerText : ''")

    driver.get(url)
    try:
        try:
            WebDriverWait(driver, timeout, poll_frequency=1).until(
                lambda d: ready(text(d)) or any(e in text(d) for e in UI_ERRORS))
        except TimeoutException:
            pytest.fail(f"{url}: not shown within {timeout:.0f} s; the page says:\n{text(driver)[:2000]}")
        for element in driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{focus}']")[:1] if focus else []:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    finally:
        TEST_OUTPUT.mkdir(exist_ok=True)
        driver.save_screenshot(str(TEST_OUTPUT / shot))
        print(f"screenshot: {TEST_OUTPUT / shot}")
    shown = text(driver)
    assert not [e for e in UI_ERRORS if e in shown], f"{url} shows an error:\n{shown[:2000]}"
    return shown


def test_the_mlflow_ui_shows_the_runs_the_test_accuracy_and_the_error_gallery(project, first_run, env, chromium,
                                                                               tmp_path):
    """The MLflow UI (`make ui`'s command) on the finished run, seen in headless Chromium: the training-runs view
    lists the pipeline's run, the parent run's page shows its test accuracy (read from the page's metrics, not
    the runs table, whose columns are a per-browser setting), and plots/errors.html opens in the artifact view
    with every thumbnail decoded. Screenshots in test-output/."""
    from selenium.webdriver.common.by import By

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("transferkit")
    parent = next(r for r in client.search_runs([experiment.experiment_id])
                  if r.data.tags.get("transferkit.stage") == "pipeline")
    accuracy = parent.data.metrics["test_accuracy"]

    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as sink:  # as `make ui`, on one worker
        server = subprocess.Popen(
            ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"], cwd=project,
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True)
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"
    # The Makefile's UI_URL parameter: MLflow 3.17 otherwise shows an experiment in its GenAI view.
    training = "?workflowType=machine_learning"
    size = chromium.get_window_size()
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server, log, 180)
        chromium.set_window_size(1600, 1000)  # room for the runs table beside MLflow's assistant panel
        chromium.get_log("browser")  # this test's console only
        runs = ui_page(chromium, f"{base}/runs{training}", lambda text: parent.info.run_name in text,
                       "mlflow-training-runs.png")
        assert parent.info.run_name in runs, f"the runs list does not show {parent.info.run_name}:\n{runs[:2000]}"
        matching = re.search(r"(\d+)\s+matching runs?", runs)
        assert matching is None or int(matching.group(1)) > 0, runs[:2000]

        page = ui_page(chromium, f"{base}/runs/{parent.info.run_id}{training}", lambda text: "test_accuracy" in text,
                       "mlflow-parent-run.png", focus="test_accuracy")
        lines = [line.strip() for line in page.splitlines()]
        assert "test_accuracy" in lines, f"the parent run's page has no test_accuracy:\n{page[:3000]}"
        shown = lines[lines.index("test_accuracy") + 1]
        assert abs(float(shown) - accuracy) < 1e-6, f"test_accuracy shown {shown}, logged {accuracy}"

        ui_page(chromium, f"{base}/runs/{parent.info.run_id}/artifacts/plots/errors.html{training}",
                lambda text: "plots/errors.html" in text and bool(chromium.find_elements(By.TAG_NAME, "iframe")),
                "mlflow-errors-html.png")
        chromium.switch_to.frame(chromium.find_element(By.TAG_NAME, "iframe"))
        try:
            gallery = chromium.execute_script(
                "return [document.title, Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)]")
        finally:
            chromium.switch_to.default_content()
        assert gallery[0] == "Test errors" and gallery[1] and all(gallery[1]), gallery
        server_errors = [m for m in console_errors(chromium) if "status of 5" in m]
        assert not server_errors, server_errors
    finally:
        chromium.set_window_size(size["width"], size["height"])
        os.killpg(server.pid, 15)  # the server and its uvicorn worker
        server.wait(timeout=30)


def test_second_repro_runs_nothing(project, first_run, env):
    again = sh(["dvc", "repro"], project, env)
    assert stages_run(again.stdout) == []


def test_predict_on_new_images(project, first_run, env, tmp_path):
    import numpy as np

    rng = np.random.default_rng(99)
    draw_example("square", 40, rng).save(tmp_path / "new square.png")
    draw_example("circle", 40, rng).convert("L").save(tmp_path / "grey.jpg")
    out = sh(["transferkit", "predict", str(tmp_path), "--top-k", "2"], project, env)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "path,rank,label,probability" and len(lines) == 1 + 2 * 2
    assert {line.split(",")[2] for line in lines[1:]} <= {"circle", "square", "triangle", UNICODE_CLASS}
    as_json = json.loads(sh(["transferkit", "predict", str(tmp_path / "new square.png"), "--format", "json"],
                            project, env).stdout)
    assert len(as_json) == 1 and 0.0 <= as_json[0]["predictions"][0]["probability"] <= 1.0




def test_served_model_takes_image_files_and_answers_like_predict(project, first_run, env, tmp_path):
    """The README's serve line, in a fresh shell: the registered model answers a real PNG and a real JPEG
    (base64) with the label `transferkit predict` gives; a bad payload is a one-line 400."""
    from PIL import Image

    png = sorted((project / "data" / "tiny" / "square").glob("square_*.png"))[0]
    jpeg = tmp_path / "circle.jpg"
    circle = sorted((project / "data" / "tiny" / "circle").glob("circle_*.png"))[0]
    Image.open(circle).convert("RGB").save(jpeg, quality=95)
    predicted = json.loads(sh(["transferkit", "predict", str(png), str(jpeg), "--format", "json"], project, env).stdout)
    expected = [p["predictions"][0]["label"] for p in predicted]

    port = free_port()
    line = readme_line('PATH="$PWD/.venv/bin:$PATH" .venv/bin/mlflow models serve')
    line = line.replace("--port 5001", f"--port {port}")
    assert f"--port {port}" in line
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(["sh", "-c", line], cwd=project, env={**env, "PATH": system_path()},
                                  stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/ping", server, log, 180)
        images = [base64.b64encode(path.read_bytes()).decode() for path in (png, jpeg)]
        status, body = post_json(f"{url}/invocations", {"dataframe_records": [{"image": i} for i in images]})
        assert status == 200, body
        assert [row["label"] for row in body["predictions"]] == expected
        assert set(body["predictions"][0]["probabilities"]) == {"circle", "square", "triangle", UNICODE_CLASS}
        for payload, message in (({"dataframe_records": [{"image": base64.b64encode(b"not an image").decode()}]},
                                  "image 0: not an image"),
                                 ({"dataframe_records": [{"picture": images[0]}]}, "no column 'image'")):
            status, body = post_json(f"{url}/invocations", payload)
            assert status == 400 and message in body["message"] and "\n" not in body["message"], body
            assert "stack_trace" not in body
    finally:
        os.killpg(server.pid, 15)  # the server and its uvicorn workers
        server.wait(timeout=30)


def test_same_inputs_same_model(project, first_run, env):
    """Extracting and training again from the same data and params gives the same metrics and predictions,
    to the bit."""
    outputs = ["metrics/train_head.json", "metrics/finetune.json", "metrics/evaluate.json", "plots/predictions.csv",
               "plots/train_head.csv", "plots/finetune.csv"]
    before = {name: (project / name).read_bytes() for name in outputs}
    shutil.rmtree(project / "data" / "embedding_store")  # no cached embeddings: the backbone runs again too
    again = sh(["dvc", "repro", "--force", "--downstream", "extract"], project, env)
    assert stages_run(again.stdout) == STAGES[STAGES.index("extract"):]
    assert json.loads((project / "metrics" / "extract.json").read_text())["reused"] == 0
    for name in outputs:
        assert (project / name).read_bytes() == before[name], f"{name} differs between two identical runs"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, env):
    """A real MLflow tracking server on loopback, as a team would run."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = folder / "server.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
             str(folder / "artifacts")], env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as make services
            stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, log, 120)
    except AssertionError:
        proc.kill()
        raise
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_readme_experiment_line_works_in_a_fresh_shell(project, first_run, env, mlflow_server):
    """The README's `dvc exp run` line, exactly as printed, with the system PATH (no venv on it, none
    activated): only the stages after the head re-run, into the team tracking server."""
    commit_all(project, "baseline run")
    line = readme_line(".venv/bin/dvc exp run -S head.learning_rate=0.003")
    fresh_shell = {**env, "PATH": system_path(), "MLFLOW_TRACKING_URI": mlflow_server}
    out = sh(shlex.split(line), project, fresh_shell)
    assert stages_run(out.stdout) == ["train_head", "finetune", "evaluate", "export"]
    assert "Traceback" not in out.stdout + out.stderr

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("transferkit")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("transferkit.stage") == "pipeline")
    assert parent.info.run_name in sh(["dvc", "exp", "show", "--json"], project, env).stdout  # named after the exp
    assert parent.data.params["head.learning_rate"] == "0.003"
    assert {"test_accuracy", "test_baseline_accuracy", "test_gain_over_baseline"} <= set(parent.data.metrics)
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert children == ["evaluate", "export", "finetune", "train_head"]


def test_broken_symlink_in_the_data_folder_is_named_by_dvc(project, first_run, env):
    """DVC hashes the data folder before prepare runs and cannot hash a dangling link: it stops,
    naming the file, with no traceback (prepare alone reports such a link and goes on)."""
    link = project / "data" / "tiny" / "circle" / "dangling.png"
    link.symlink_to(project / "data" / "tiny" / "circle" / "gone.png")
    try:
        out = sh(["dvc", "repro"], project, env, check=False)
    finally:
        link.unlink()
    assert out.returncode != 0
    assert "dangling.png" in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_coming_back_to_a_backbone_restores_the_later_stages_from_the_run_cache(project, first_run, env):
    """Backbone A, then B, then A again: the third run re-runs only extract (which finds every embedding in
    the store and writes the same table), and DVC restores train_head, finetune and evaluate from its
    run-cache; MLflow shows them as restored under one finished parent run."""
    sh(["dvc", "exp", "run", "-n", "backbone-b", "-S", "backbone.weights=none"], project, env)
    table = (project / "data" / "embeddings.npz").read_bytes()
    back = sh(["dvc", "exp", "run", "-n", "backbone-a-again", "-S", "backbone.weights=imagenet"], project, env)
    assert stages_run(back.stdout) == ["extract"]
    for name in ("train_head", "finetune", "evaluate", "export"):
        assert f"Stage '{name}' is cached - skipping run, checking out outputs" in back.stdout, back.stdout
    assert (project / "data" / "embeddings.npz").read_bytes() != table  # A's table again, not B's

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("transferkit")
    deadline = time.time() + 120  # the execution's watcher records the restored stages once dvc has ended
    while True:
        runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'backbone-a-again'")
        parent = next(iter(runs))
        if "transferkit.restored_stages" in parent.data.tags or time.time() > deadline:
            break
        time.sleep(1)
    assert parent.data.tags.get("transferkit.restored_stages") == "evaluate,export,finetune,train_head"
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted((r.info.run_name, r.data.tags.get("transferkit.restored")) for r in children) == [
        ("evaluate", "true"), ("export", "true"), ("extract", None), ("finetune", "true"), ("train_head", "true")]
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def test_texts_then_images_again_compute_no_embedding_and_restore_the_image_stages(project, first_run, env):
    """The README's text line on a tiny text folder (the tiny encoder as backbone.weights), then back to the image
    defaults: extract re-runs and finds every image embedding in the store, the later stages come from the
    run-cache. The tiny encoder's file is outside weights/ (an extract and finetune dep): the image stages'
    inputs must be exactly as before."""
    from conftest import make_text_folder, save_tiny_text_weights

    make_text_folder(project / "data" / "tiny_text", per_class=8)
    save_tiny_text_weights(project / "tiny_text.weights.h5")
    commit_all(project, "tiny texts and a tiny text encoder", env)
    text = sh(["dvc", "exp", "run", "-n", "texts", "-S", "data.source=data/tiny_text",
               "-S", "backbone.name=all_minilm_l6_v2", "-S", "backbone.weights=tiny_text.weights.h5",
               "-S", "tracking.registered_model=transferkit-text", "finetune"], project, env)
    assert sorted(stages_run(text.stdout)) == ["companion", "extract", "finetune", "prepare", "train_head"]
    assert json.loads((project / "metrics" / "extract.json").read_text())["computed"] == 16
    info = json.loads((project / "models" / "model.json").read_text())
    assert info["modality"] == "text" and info["image_size"] is None and info["text"]["max_tokens"] == 256

    back = sh(["dvc", "exp", "run", "-n", "images-again", "-S", "data.source=data/tiny",
               "-S", "backbone.name=efficientnet_lite0", "-S", "backbone.weights=imagenet",
               "-S", "tracking.registered_model=transferkit"], project, env)
    assert stages_run(back.stdout) == ["extract"], back.stdout
    assert json.loads((project / "metrics" / "extract.json").read_text())["computed"] == 0
    for name in ("prepare", "companion", "train_head", "finetune"):  # evaluate, export: unchanged or cached
        assert f"Stage '{name}' is cached - skipping run, checking out outputs" in back.stdout, back.stdout
    assert "modality" not in json.loads((project / "models" / "model.json").read_text())  # as before texts
