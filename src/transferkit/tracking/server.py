"""Where runs are recorded (the local store dvc.yaml names, or MLFLOW_TRACKING_URI), and the
tracking server as seen from a stage: reachable, letting us in, and not retried for minutes.

Plain HTTP checks made before any work (MLflow's client would retry for
minutes first), the bounded retry settings every stage process uses, and one
short line for MLflow's long failure messages. Used by tracking/runs.py and stage.py.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


@dataclass(frozen=True)
class LocalStore:
    """The local MLflow store used when MLFLOW_TRACKING_URI is not set; paths relative to the repo root."""
    database: str  # sqlite file
    artifacts: str  # folder

    @property
    def uri(self) -> str:
        return f"sqlite:///{repo_root() / self.database}"

    @property
    def artifact_root(self) -> Path:
        return repo_root() / self.artifacts


def tracking_uri(local: LocalStore) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local.uri


def counted(items: list[str]) -> list[str]:
    """Each distinct item once, in order, with how many times it came: 'x (5 times)'."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return [item if n == 1 else f"{item} ({n} times)" for item, n in counts.items()]


def tls_context(uri: str) -> ssl.SSLContext | None:
    """TLS as MLflow's own client does it: MLFLOW_TRACKING_INSECURE_TLS, else MLFLOW_TRACKING_SERVER_CERT_PATH
    (a private CA's certificate), else the system's CAs (None)."""
    if not uri.startswith("https://"):
        return None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    if os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        return ssl.create_default_context(cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    return None


def server_problem(uri: str, timeout: float = 5.0) -> str | None:
    """Why an http(s) tracking server cannot be reached, or None when it answers (or the store is local).

    One quick request to the server's /health endpoint, before any work:
    MLflow's own client retries for minutes before it gives up. A 4xx answer
    counts as reachable (a proxy may well answer 401 or 404 here); a 5xx is a
    gateway in front of a server that is down. TLS follows MLflow's own
    settings (MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH).
    """
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout, context=tls_context(uri)).close()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}" if exc.code >= 500 else None
    except (OSError, ValueError) as exc:  # URLError (refused, DNS), timeout, malformed URL
        return str(getattr(exc, "reason", None) or exc)
    return None


# MLflow's own defaults retry a dead server for minutes (7 retries, backoff factor 2, 120 s timeout).
# At most 3 retries, 2+4+8 s apart, 10 s per attempt: under a minute before a stage gives up.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def bound_retries() -> None:
    """Bounded MLflow HTTP retries for this process (and its children), unless the user chose their own."""
    import logging

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # urllib3 prints a "Retrying ..." warning for every attempt; the stage prints one line instead.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _auth_header() -> dict[str, str]:
    import base64

    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def login_problem(uri: str, timeout: float = 10.0) -> str | None:
    """Why a reachable tracking server refuses our login (HTTP 401/403), or None.

    /health is open on a server with MLflow's basic-auth app, so server_problem
    cannot tell; this asks for one experiment, which needs the login.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers=_auth_header())
    try:
        urllib.request.urlopen(request, timeout=timeout, context=tls_context(uri)).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            given = "with" if _auth_header() else "without"
            return f"HTTP {exc.code} {exc.reason} {given} credentials"
    except (OSError, ValueError):
        return None  # reachability is server_problem's question
    return None


def short_reason(exc: BaseException) -> str:
    """One short line for an MLflow/requests failure (their messages run to many lines)."""
    text = " ".join(str(exc).split())
    for marker in ("Connection refused", "Read timed out", "Max retries exceeded", "Connection aborted",
                   "Remote end closed connection", "error code 401", "error code 403", "error code 5"):
        if marker in text:
            return marker.lower() if not marker.startswith("error code") else text[text.index(marker):][:40]
    return text[:160] or type(exc).__name__
