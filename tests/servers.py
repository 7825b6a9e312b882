"""Talking to a server a test started: wait until it answers, post JSON to it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until `url` answers; fails with the server's log if it exits or takes longer than `timeout` s."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert server.poll() is None, f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)


def post_json(url: str, payload: dict) -> tuple[int, dict]:
    """POST `payload` as JSON; the status and the decoded JSON answer (errors included)."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
