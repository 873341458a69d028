"""Fixtures for Hugging Face Hub caches in tests: offline, no network, tiny built-in backbones.

The caches themselves (layout, random weights in the published formats) are made by
:mod:`hub_weights`, which has no pytest in it so that ``benchmarks/device/`` can use it too; its
helpers are re-exported here:

- :func:`cache_repo` writes any files into such a cache;
- :func:`tiny_esm2_files` / :func:`tiny_esmc_checkpoint` make tiny random weights in the
  published file formats; :func:`cache_tiny_weights` puts them where a registered backbone looks;
- fixtures :func:`no_network` (any TCP/UDP connection or DNS lookup fails the test) and
  :func:`tiny_hub` (temporary cache, offline, ``SYNNAV_TEST_TINY_BACKBONES=1``, no network).

Use them from a test module with ``from hub_fixture import tiny_hub, no_network``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hub_weights import (  # noqa: F401 - re-exported for the tests
    LFS_SUFFIXES,
    blob_of,
    cache_random_weights,
    cache_repo,
    cache_tiny_weights,
    esm2_files,
    esmc_checkpoint,
    git_blob_sha1,
    official_esmc_shapes,
    official_esmc_state_dict,
    repo_folder,
    sha256_hex,
    tiny_esm2_files,
    tiny_esmc_checkpoint,
)

# --- fixtures -----------------------------------------------------------------------------------


class NetworkAccessInTest(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly on any attempt to open an internet connection or resolve a name."""

    def refuse(*args, **kwargs):
        raise NetworkAccessInTest(f"a test tried to reach the network: {args!r}")

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(real):
        def connect(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refuse(address)
            return real(self, address, *args)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def tiny_hub(tmp_path, monkeypatch, no_network) -> Path:
    """A fresh synnav cache, offline, tiny built-in backbones; returns its hub directory."""
    monkeypatch.setenv("SYNNAV_CACHE_DIR", str(tmp_path / "synnav-cache"))
    monkeypatch.setenv("SYNNAV_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SYNNAV_TEST_TINY_BACKBONES", "1")
    # Keep the user's own Hugging Face home (token, default cache) out of the picture.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = tmp_path / "synnav-cache" / "hub"
    hub.mkdir(parents=True)
    return hub
