"""A Hub that cannot be reached is reported in seconds; a slow one is still waited for.

No test here leaves this machine: the "hub" is a closed port or a silent server on 127.0.0.1, and
name resolution is replaced by one that fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import huggingface_hub.constants as hub_constants
import huggingface_hub.errors
import pytest

from synnav_cli.errors import UserError
from synnav_cli.weights import hub, reach

# huggingface_hub's own retries took 24 s to report either failure here: well over this.
FAST = 8.0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _point_hub_at(monkeypatch, endpoint: str) -> None:
    """huggingface_hub reads HF_ENDPOINT once, at import, into two constants."""
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)


@pytest.fixture
def local_names_only(monkeypatch):
    """Any name lookup but this machine's own fails the test: nothing may leave it."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to resolve {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNNAV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("SYNNAV_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_refused_connection_is_reported_within_seconds(fresh_cache):
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    # Timed inside the process: the interpreter's start, slow on a loaded machine, is no part of it.
    code = (
        "import time\nfrom synnav_cli.weights.hub import fetch\nstarted = time.monotonic()\n"
        "try:\n    fetch('org/model', ['weights.bin'])\n"
        "finally:\n    print(time.monotonic() - started)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    elapsed = float(done.stdout.split()[-1])
    assert done.returncode != 0
    assert "could not download org/model (weights.bin)" in done.stderr
    assert "could not be reached" in done.stderr and "SYNNAV_OFFLINE=1" in done.stderr
    assert elapsed < FAST, f"{elapsed:.1f} s to report a refused connection"


def test_a_name_that_does_not_resolve_is_reported_within_seconds(fresh_cache, monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    _point_hub_at(monkeypatch, "https://hub.synnav-test.invalid")
    started = time.monotonic()
    with pytest.raises(UserError, match="could not be reached.*Name or service not known"):
        hub.fetch("org/model", ["weights.bin"])
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"{elapsed:.1f} s to report a name that does not resolve"


def test_a_slow_answer_is_not_taken_for_an_unreachable_hub(fresh_cache, monkeypatch, local_names_only):
    """A server that accepts the connection but answers late is left to huggingface_hub's
    retries (which wait longer): only a connection that cannot be made is reported early."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted = []

    def accept_and_stay_silent():
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(hub_constants, "HF_HUB_ETAG_TIMEOUT", 1)
    try:
        assert reach.unreachable("org/model", "weights.bin", None) is None
        assert accepted  # the request did connect; it only went unanswered
    finally:
        server.close()
        for connection in accepted:
            connection.close()


def test_which_errors_count_as_a_failure_to_connect():
    httpx2 = pytest.importorskip("httpx2")
    assert reach.connect_failure(httpx2.ConnectError("refused"))
    assert reach.connect_failure(httpx2.ConnectTimeout("no answer to SYN"))
    assert reach.connect_failure(httpx2.ProxyError("proxy down"))
    assert not reach.connect_failure(httpx2.ReadTimeout("slow server"))
    assert not reach.connect_failure(httpx2.ReadError("reset"))
    assert not reach.connect_failure(ValueError("bug"))
    offline = huggingface_hub.errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1")
    assert not reach.connect_failure(offline)  # the download reports it, as before
