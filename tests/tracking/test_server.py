"""The tracking server seen from a stage: login check, bounded retries, one short reason, records not sent.

Fast: a tiny HTTP server in a thread stands in for a server with a login;
the real team services are in tests/e2e/test_team.py.
"""

from __future__ import annotations

import base64
import http.server
import ssl
import threading

import pytest

from transferkit.tracking.server import HTTP_DEFAULTS, bound_retries, login_problem, server_problem, short_reason

from conftest import closed_port_url


class LoginOnly(http.server.BaseHTTPRequestHandler):
    """/health is open; everything else needs user:secret-password (like MLflow's basic-auth app)."""

    def do_GET(self):
        good = "Basic " + base64.b64encode(b"user:secret-password").decode()
        ok = self.path == "/health" or self.headers.get("Authorization") == good
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def login_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoginOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_login_is_checked_where_health_cannot_tell(login_server, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert server_problem(login_server) is None  # /health answers to anyone
    assert login_problem(login_server) == "HTTP 401 Unauthorized without credentials"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    assert login_problem(login_server) == "HTTP 401 Unauthorized with credentials"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-password")
    assert login_problem(login_server) is None
    assert login_problem(closed_port_url()) is None  # unreachable is server_problem's answer, not this one
    assert login_problem("sqlite:///x.db") is None


@pytest.fixture
def private_ca_login_server(tmp_path):
    """LoginOnly over HTTPS, with a certificate no system CA signed (a team's private CA)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoginOnly)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()


def test_a_private_ca_is_trusted_by_both_checks(private_ca_login_server, monkeypatch):
    """MLFLOW_TRACKING_SERVER_CERT_PATH counts for the login check too: without it there, the TLS error was
    swallowed and a wrong login passed unnoticed."""
    uri, cert = private_ca_login_server
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_INSECURE_TLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
    assert "CERTIFICATE_VERIFY_FAILED" in server_problem(uri)  # the system's CAs do not know it
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    assert server_problem(uri) is None
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    assert login_problem(uri) == "HTTP 401 Unauthorized with credentials"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-password")
    assert login_problem(uri) is None


def test_retries_are_bounded_unless_the_user_chose(monkeypatch):
    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    bound_retries()
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    factor = float(HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    retries = int(HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    timeout = float(HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    worst = (retries + 1) * timeout + sum(factor * 2 ** i for i in range(retries))
    assert worst <= 75  # about a minute, at worst


def test_short_reason_is_one_short_line():
    long = Exception("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with exception\n"
                     "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: ... "
                     "(Caused by NewConnectionError('...: [Errno 111] Connection refused'))")
    assert short_reason(long) == "connection refused"
    assert "\n" not in short_reason(Exception("a\nb")) and len(short_reason(Exception("x" * 500))) <= 160


class DeadClient:
    """An MlflowClient whose server went away."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("Max retries exceeded (Connection refused)")
        return fail


def stage_run(required: bool):
    from transferkit.config import load_params
    from transferkit.tracking.runs import StageRun
    from transferkit.tracking.server import LocalStore

    params = load_params("params.yaml")
    run = StageRun("train_head", params, LocalStore("mlflow.db", "mlruns"))
    run.required, run.uri, run.client = required, "http://127.0.0.1:1", DeadClient()
    run.run_id, run.parent_id = "child", "parent"
    return run


def test_server_gone_mid_stage_is_one_error_naming_it(monkeypatch):
    from transferkit.errors import TransferkitError

    monkeypatch.chdir(__import__("conftest").REPO)
    run = stage_run(required=True)
    with pytest.raises(TransferkitError, match=r"MLflow tracking server http://127.0.0.1:1 stopped answering "
                                               r"while sending per-epoch metrics loss \(connection refused\)"):
        run.log_metrics({"loss": 1.0}, step=0)
    run.__exit__(TransferkitError, None, None)  # the failed stage's exit sends nothing more and raises nothing


def test_server_gone_not_required_finishes_and_lists_what_was_not_sent(monkeypatch, capsys):
    monkeypatch.chdir(__import__("conftest").REPO)
    run = stage_run(required=False)
    for epoch in range(3):
        run.log_metrics({"loss": 1.0}, step=epoch)
    run.log_artifact("params.yaml")
    run.__exit__(None, None, None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "going on without it" in lines[0]
    assert lines[1] == ("train_head: warning: MLflow tracking server http://127.0.0.1:1 stopped answering "
                        "(connection refused); not sent: per-epoch metrics loss (3 times); artifact params.yaml; "
                        "the train_head run's status; the pipeline run's status")
