"""The weights cache: offline resolution, integrity checks, errors, listing, clearing, and the CLI.

Nothing here reaches the network: caches are written in huggingface_hub's layout by
``hub_fixture``; the few "online" cases replace ``hf_hub_download`` with a stand-in that either
fails the way the hub fails or writes the files the way the hub writes them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from checks import one_error_line
from click.testing import CliRunner
from hub_fixture import (  # noqa: F401 - fixtures
    blob_of,
    cache_repo,
    git_blob_sha1,
    no_network,
    repo_folder,
    sha256_hex,
    tiny_hub,
)

from synnav_cli import paths
from synnav_cli.cli import cache as cache_cli
from synnav_cli.cli.cache import cache_group
from synnav_cli.errors import UserError
from synnav_cli.weights import hub as cache
from synnav_cli.weights import integrity, listing

REPO = "example-org/example-model"
WEIGHTS = b"\x00weights\x01" * 1000
CONFIG = b'{"hidden_size": 8}\n'


@pytest.fixture
def hub(tiny_hub) -> Path:
    cache_repo(tiny_hub, REPO, {"config.json": CONFIG, "data/weights/model.pth": WEIGHTS})
    return tiny_hub


def test_hub_fixture_layout_is_the_hubs(hub):
    root = repo_folder(hub, REPO)
    commit = (root / "refs" / "main").read_text()
    assert len(commit) == 40 and "\n" not in commit
    link = root / "snapshots" / commit / "data" / "weights" / "model.pth"
    assert os.readlink(link) == f"../../../../blobs/{sha256_hex(WEIGHTS)}"
    assert os.readlink(root / "snapshots" / commit / "config.json") == (
        f"../../blobs/{git_blob_sha1(CONFIG)}"
    )
    # huggingface_hub itself resolves it offline, and scans it without complaint.
    path = huggingface_hub.hf_hub_download(REPO, "config.json", cache_dir=hub, local_files_only=True)
    assert Path(path).read_bytes() == CONFIG
    info = huggingface_hub.scan_cache_dir(hub)
    assert not info.warnings and {r.repo_id for r in info.repos} == {REPO}


def test_the_network_guard_works(no_network):
    import socket

    from hub_fixture import NetworkAccessInTest

    with pytest.raises(NetworkAccessInTest):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(NetworkAccessInTest):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9))


# --- fetching offline -------------------------------------------------------------------------------


def test_fetch_returns_the_snapshot(hub):
    snapshot = cache.fetch(REPO, ["config.json", "data/weights/model.pth"])
    assert snapshot.parent.name == "snapshots"
    assert (snapshot / "data/weights/model.pth").read_bytes() == WEIGHTS
    assert snapshot.is_relative_to(hub.resolve())


def test_git_sha1_is_what_the_hub_records():
    # The etag of a small file is git's object id; `git hash-object` of "hello\n" is this.
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


@pytest.mark.parametrize(
    "setting, reason",
    [("SYNNAV_OFFLINE", "SYNNAV_OFFLINE=1"), ("HF_HUB_OFFLINE", "HF_HUB_OFFLINE=1"),
     (None, "offline was requested")],
)  # fmt: skip
def test_not_cached_while_offline(tiny_hub, monkeypatch, setting, reason):
    monkeypatch.delenv("SYNNAV_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    if setting:
        monkeypatch.setenv(setting, "1")
    with pytest.raises(UserError) as error:
        cache.fetch(REPO, ["data/weights/model.pth"], offline=setting is None, backbone="mine")
    message = str(error.value)
    assert f"{REPO} (data/weights/model.pth) is not in the synnav cache" in message
    assert reason in message and "`synnav cache fetch mine`" in message
    assert f"hf download {REPO} data/weights/model.pth --cache-dir" in message


def test_offline_mode_settings(monkeypatch):
    for name in ("SYNNAV_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert not cache.offline_mode()
    assert cache.offline_mode(True)
    monkeypatch.setenv("SYNNAV_OFFLINE", "0")
    assert not cache.offline_mode()
    monkeypatch.setenv("SYNNAV_OFFLINE", "yes")
    assert cache.offline_mode()


def test_is_cached(hub):
    assert cache.is_cached(REPO, "config.json")
    assert cache.is_cached(REPO, "data/weights/model.pth")
    assert not cache.is_cached(REPO, "other.bin")
    assert not cache.is_cached("example-org/absent", "config.json")
    snapshot = cache.fetch(REPO, ["config.json"])
    blob_of(snapshot / "config.json").unlink()  # a dangling link is not a cached file
    assert not cache.is_cached(REPO, "config.json")


# --- integrity --------------------------------------------------------------------------------------


def test_truncated_weights_are_refused(hub):
    snapshot = cache.fetch(REPO, ["data/weights/model.pth"])  # verified once: stamp written
    blob = blob_of(snapshot / "data/weights/model.pth")
    blob.write_bytes(WEIGHTS[:100])
    with pytest.raises(UserError) as error:
        cache.fetch(REPO, ["data/weights/model.pth"])
    message = str(error.value)
    assert f"data/weights/model.pth of {REPO} is damaged" in message
    assert f"synnav cache clear {REPO}" in message and "100 bytes" in message


def test_overwritten_bytes_of_the_same_size_are_refused(hub):
    snapshot = cache.fetch(REPO, ["data/weights/model.pth"])
    blob = blob_of(snapshot / "data/weights/model.pth")
    data = bytearray(WEIGHTS)
    data[500] ^= 0xFF
    time.sleep(0.01)  # a new modification time voids the stamp of the earlier check
    blob.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is damaged"):
        cache.fetch(REPO, ["data/weights/model.pth"])


def test_small_files_are_checked_against_their_git_hash(hub):
    snapshot = cache.fetch(REPO, ["config.json"])
    blob_of(snapshot / "config.json").write_bytes(b'{"hidden_size": 9}\n')
    with pytest.raises(UserError, match=f"config.json of {REPO} is damaged"):
        cache.fetch(REPO, ["config.json"])


def test_a_verified_file_is_not_hashed_again(hub, monkeypatch):
    cache.fetch(REPO, ["data/weights/model.pth"])

    def no_hashing(*args):
        raise AssertionError("hashed again")

    monkeypatch.setattr(integrity, "_digest", no_hashing)
    cache.fetch(REPO, ["data/weights/model.pth"])


def test_copied_files_are_checked_against_the_tree_listing(tiny_hub):
    # Where symlinks are unavailable the hub copies files; newer versions record the commit's
    # tree (sizes and hashes) next to them, and that record is what is checked then.
    snapshot = cache_repo(tiny_hub, REPO, {"data/weights/model.pth": WEIGHTS})
    link = snapshot / "data/weights/model.pth"
    link.unlink()
    link.write_bytes(WEIGHTS[:10])
    listing = {"format_version": 1, "files": {"data/weights/model.pth": {
        "size": len(WEIGHTS), "blob_id": "0" * 40, "lfs_sha256": sha256_hex(WEIGHTS),
        "lfs_size": len(WEIGHTS)}}}  # fmt: skip
    trees = repo_folder(tiny_hub, REPO) / "trees"
    trees.mkdir()
    (trees / f"{snapshot.name}.json").write_text(json.dumps(listing))
    with pytest.raises(UserError, match="is damaged"):
        cache.fetch(REPO, ["data/weights/model.pth"])


def test_load_torch_state_dict_refuses_non_state_dicts(tmp_path):
    import torch

    path = tmp_path / "x.pth"
    torch.save({"a": torch.zeros(2), "b": [1, 2]}, path)
    with pytest.raises(UserError, match="not a state dict"):
        integrity.load_torch_state_dict(path, repo_id=REPO, filename="x.pth")
    torch.save({"a": torch.zeros(2)}, path)
    assert set(integrity.load_torch_state_dict(path, repo_id=REPO, filename="x.pth")) == {"a"}


# --- online behaviour, with the hub replaced --------------------------------------------------------


@pytest.fixture
def online(tiny_hub, monkeypatch):
    """Offline switches off; ``hf_hub_download`` replaced by whatever the test installs."""
    monkeypatch.delenv("SYNNAV_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(cache, "_announced", set())

    def install(behaviour):
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", behaviour)

    return install


def fake_download(hub: Path, files: dict[str, bytes], calls: list):
    """Behaves like hf_hub_download fetching ``files`` from the hub into ``cache_dir``."""

    def download(repo_id, filename, *, cache_dir, revision=None, local_files_only=False, **kw):
        calls.append((filename, revision, local_files_only))
        from huggingface_hub.utils import are_progress_bars_disabled

        calls.append(("progress bars disabled", are_progress_bars_disabled()))
        if filename not in files:
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not found")
        snapshot = cache_repo(Path(cache_dir), repo_id, {filename: files[filename]})
        return str(snapshot / filename)

    return download


def test_first_download_says_where_and_under_which_licence(tiny_hub, online, capsys):
    calls: list = []
    online(fake_download(tiny_hub, {"config.json": CONFIG, "w.pth": WEIGHTS}, calls))
    cache.fetch(REPO, ["config.json", "w.pth"], licence="Cambrian Open", backbone="mine")
    err = capsys.readouterr().err
    assert f"downloading {REPO} (config.json, w.pth) for backbone mine into {paths.hub_dir()}" in err
    assert "Cambrian Open licence" in err and f"https://huggingface.co/{REPO}" in err
    # The second file came from the commit the first one resolved to.
    assert calls[0][1] is None and len(calls[2][1]) == 40
    # stderr is not a terminal here: progress bars were off during the download, and back after.
    assert ("progress bars disabled", True) in calls
    assert not huggingface_hub.utils.are_progress_bars_disabled()

    calls.clear()
    cache.fetch(REPO, ["config.json", "w.pth"], licence="Cambrian Open")
    assert capsys.readouterr().err == ""
    # Everything cached: resolved locally, no request to the Hub.
    assert [(c[0], c[2]) for c in calls if len(c) == 3] == [("config.json", True), ("w.pth", True)]


def test_remote_file_missing(tiny_hub, online):
    online(fake_download(tiny_hub, {}, []))
    with pytest.raises(cache.RemoteFileMissing, match=f"{REPO} has no file w.pth"):
        cache.fetch(REPO, ["w.pth"])


def fake_response(status: int):
    return SimpleNamespace(status_code=status, headers={}, request=None, url="https://hf.test")


def raising(error: Exception):
    def download(*args, **kwargs):
        raise error

    return download


def hub_errors():
    import huggingface_hub.errors  # a lazily loaded submodule

    return huggingface_hub.errors


@pytest.mark.parametrize(
    "make_error, expected",
    [
        (lambda: hub_errors().GatedRepoError("gated", response=fake_response(403)),
         [f"{REPO} is a gated repository", f"https://huggingface.co/{REPO}", "hf auth login",
          "HF_TOKEN"]),
        (lambda: hub_errors().RepositoryNotFoundError("nope", response=fake_response(401)),
         [f"repository {REPO} was not found", "hf auth login"]),
        (lambda: hub_errors().HfHubHTTPError("bad token", response=fake_response(401)),
         ["rejected the token", "hf auth login", "HF_TOKEN"]),
        (lambda: hub_errors().HfHubHTTPError("forbidden", response=fake_response(403)),
         ["denied access", f"https://huggingface.co/{REPO}"]),
        (lambda: hub_errors().HfHubHTTPError("503 Server Error", response=fake_response(503)),
         ["the Hugging Face Hub failed", "503 Server Error", "try again later"]),
        (lambda: TimeoutError("The read operation timed out"),
         ["network failure", "The read operation timed out"]),
        (lambda: OSError("Consistency check failed: file should be of size 10 but has size 5"),
         ["ended early", "run the command again"]),
    ],
)  # fmt: skip
def test_hub_failures_become_one_line(online, make_error, expected):
    online(raising(make_error()))
    with pytest.raises(UserError) as error:
        cache.fetch(REPO, ["w.pth"])
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_hub_unreachable_and_not_cached(online):
    error = hub_errors().LocalEntryNotFoundError("An error happened while trying to locate the file")
    error.__cause__ = ConnectionError("[Errno -3] Temporary failure in name resolution")
    online(raising(error))
    with pytest.raises(UserError) as raised:
        cache.fetch(REPO, ["w.pth"])
    message = str(raised.value)
    assert f"could not download {REPO} (w.pth)" in message
    assert "Temporary failure in name resolution" in message and "SYNNAV_OFFLINE=1" in message


def test_http_library_errors_count_as_network_failures(online):
    httpx = pytest.importorskip("httpx2")
    online(raising(httpx.ReadError("connection reset by peer")))
    with pytest.raises(UserError, match="network failure.*connection reset by peer"):
        cache.fetch(REPO, ["w.pth"])


def test_programming_errors_are_not_disguised(online):
    online(raising(TypeError("unexpected keyword")))
    with pytest.raises(TypeError):
        cache.fetch(REPO, ["w.pth"])


def test_esm2_prefers_safetensors_and_falls_back_when_the_repo_has_none(tiny_hub, online):
    from synnav_cli.plugins import get_backbone

    calls: list = []
    online(fake_download(tiny_hub, {"config.json": b"{}", "pytorch_model.bin": b"..."}, calls))
    snapshot, weights = get_backbone("esm2_8m").fetch_weights()
    requested = [c[0] for c in calls if len(c) == 3]
    assert requested == ["config.json", "model.safetensors", "config.json", "pytorch_model.bin"]
    assert weights == "pytorch_model.bin" and (snapshot / weights).is_file()


# --- listing and clearing -------------------------------------------------------------------------


def test_cached_repos_lists_sizes_files_and_backbones(hub):
    from hub_fixture import cache_tiny_weights

    cache_tiny_weights("esmc300m")
    repos = {repo.repo_id: repo for repo in listing.cached_repos(cache_cli.backbones_by_repo())}
    assert set(repos) == {REPO, "EvolutionaryScale/esmc-300m-2024-12"}
    mine = repos[REPO]
    assert mine.size_on_disk == len(WEIGHTS) + len(CONFIG)
    assert mine.files == ("config.json", "data/weights/model.pth")
    assert mine.backbones == () and len(mine.revisions) == 1
    assert repos["EvolutionaryScale/esmc-300m-2024-12"].backbones == ("esmc300m",)
    assert mine.to_json()["files"] == ["config.json", "data/weights/model.pth"]


def test_clear_one_repo_and_everything(hub):
    other = "example-org/other"
    cache_repo(hub, other, {"x.bin": b"x" * 10})
    cache.fetch(REPO, ["data/weights/model.pth"])
    (hub / ".locks" / repo_folder(hub, REPO).name).mkdir(parents=True)
    removed = listing.clear(REPO)
    assert [r.repo_id for r in removed] == [REPO]
    assert not repo_folder(hub, REPO).exists()
    assert not (hub / ".locks" / repo_folder(hub, REPO).name).exists()
    assert [r.repo_id for r in listing.cached_repos()] == [other]
    assert listing.clear(REPO) == []
    assert [r.repo_id for r in listing.clear(None)] == [other]
    assert listing.cached_repos() == []


def test_clear_removes_partial_downloads(tiny_hub):
    folder = repo_folder(tiny_hub, REPO)
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / ("a" * 64 + ".incomplete")).write_bytes(b"x" * 50)
    (listed,) = listing.cached_repos()
    assert listed.size_on_disk == 50 and listed.files == ()
    listing.clear(REPO)
    assert not folder.exists()


# --- the `synnav cache` commands ------------------------------------------------------------------


def invoke(*args, input=None):
    return CliRunner().invoke(cache_group, list(args), input=input, catch_exceptions=True)


def test_cli_path(tiny_hub):
    result = invoke("path")
    assert result.exit_code == 0
    assert result.output.strip() == os.environ["SYNNAV_CACHE_DIR"]


def test_cli_list_table_and_json(hub):
    from hub_fixture import cache_tiny_weights

    cache_tiny_weights("esm2_8m")
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["REPOSITORY", "SIZE", "BACKBONES", "FILES"]
    assert any(line.startswith("facebook/esm2_t6_8M_UR50D") and "esm2_8m" in line for line in lines)
    data = json.loads(invoke("list", "--json").output)
    assert {entry["repo_id"] for entry in data} == {REPO, "facebook/esm2_t6_8M_UR50D"}
    assert all({"size_on_disk", "files", "backbones", "path"} <= set(entry) for entry in data)


def test_cli_list_empty(tiny_hub):
    assert json.loads(invoke("list", "--json").output) == []
    assert invoke("list").exit_code == 0


def test_cli_clear_needs_yes_without_a_terminal(hub):
    from hub_fixture import cache_tiny_weights

    cache_tiny_weights("esmc300m")
    result = invoke("clear", "esmc-300m")  # stdin is not a terminal under CliRunner: no prompt
    assert isinstance(result.exception, UserError)
    assert "--yes" in str(result.exception)
    assert cache.is_cached("EvolutionaryScale/esmc-300m-2024-12", "data/weights/esmc_300m_2024_12_v0.pth")

    result = invoke("clear", "esmc-300m", "--yes")
    assert result.exit_code == 0, result.output
    assert "Deleted" in result.output
    assert [r.repo_id for r in listing.cached_repos()] == [REPO]


def test_cli_clear_by_repository_and_everything(hub):
    assert invoke("clear", REPO, "-y").exit_code == 0
    assert listing.cached_repos() == []
    cache_repo(hub, REPO, {"config.json": CONFIG})
    assert invoke("clear", "--yes").exit_code == 0
    assert listing.cached_repos() == []
    result = invoke("clear", "--yes")
    assert result.exit_code == 0 and "Nothing to delete" in result.output


def test_cli_clear_asks_on_a_terminal(hub, monkeypatch):
    monkeypatch.setattr(cache_cli, "_stdin_is_interactive", lambda: True)
    result = invoke("clear", REPO, input="n\n")
    assert result.exit_code != 0 and listing.cached_repos()
    result = invoke("clear", REPO, input="y\n")
    assert result.exit_code == 0 and listing.cached_repos() == []


def test_cli_clear_unknown_backbone(hub):
    result = invoke("clear", "nosuchmodel", "--yes")
    assert isinstance(result.exception, UserError)
    assert "known backbones" in str(result.exception)
    assert listing.cached_repos()


def test_cli_fetch(tiny_hub):
    result = invoke("fetch", "esmc300m")
    assert isinstance(result.exception, UserError)
    assert "EvolutionaryScale/esmc-300m-2024-12" in str(result.exception)
    from hub_fixture import cache_tiny_weights

    cache_tiny_weights("esmc300m")
    result = invoke("fetch", "esmc300m")
    assert result.exit_code == 0, result.output
    assert "esmc300m: weights cached" in result.output and "Cambrian Open" in result.output


# --- what a user sees: one line on stderr, exit 1, no traceback ---------------------------------


def run_synnav(*args):
    from synnav_cli.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize(
    "make_error, expected",
    [
        (lambda: hub_errors().GatedRepoError("Access to model is restricted", response=fake_response(401)),
         ["EvolutionaryScale/esmc-600m-2024-12 is a gated repository",
          "accept its licence on https://huggingface.co/EvolutionaryScale/esmc-600m-2024-12",
          "`hf auth login`", "HF_TOKEN"]),
        (lambda: ConnectionError("[Errno 101] Network is unreachable"),
         ["network failure while downloading EvolutionaryScale/esmc-600m-2024-12", "Network is unreachable"]),
    ],
    ids=["gated", "network"],
)  # fmt: skip
def test_cli_download_failures(online, make_error, expected):
    online(raising(make_error()))
    line = one_error_line(run_synnav("cache", "fetch", "esmc600m"))
    for part in expected:
        assert part in line


def test_cli_first_download_announces_licence_and_destination_once(tiny_hub, online):
    from hub_fixture import tiny_esmc_checkpoint

    online(fake_download(tiny_hub, {"data/weights/esmc_600m_2024_12_v0.pth": tiny_esmc_checkpoint()}, []))
    first = run_synnav("cache", "fetch", "esmc600m")
    assert first.exit_code == 0, first.output
    announced = [line for line in first.stderr.splitlines() if line.startswith("synnav: ")]
    assert announced == [
        "synnav: downloading EvolutionaryScale/esmc-600m-2024-12 (data/weights/esmc_600m_2024_12_v0.pth) "
        f"for backbone esmc600m into {paths.hub_dir()}",
        "synnav: these weights are under the Cambrian Non-Commercial licence: "
        "https://huggingface.co/EvolutionaryScale/esmc-600m-2024-12",
    ]
    again = run_synnav("cache", "fetch", "esmc600m")
    assert again.exit_code == 0 and "synnav: " not in again.stderr


def test_progress_bars_stay_on_for_a_terminal(tiny_hub, online, monkeypatch):
    calls: list = []
    online(fake_download(tiny_hub, {"w.pth": WEIGHTS}, calls))
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    cache.fetch(REPO, ["w.pth"])
    assert ("progress bars disabled", False) in calls


def test_cli_damaged_weights_are_not_loaded(tiny_hub, small_dataset):
    from hub_fixture import cache_tiny_weights

    snapshot = cache_tiny_weights("esmc600m")
    blob = blob_of(snapshot / "data/weights/esmc_600m_2024_12_v0.pth")
    blob.write_bytes(blob.read_bytes()[:-4096])
    line = one_error_line(run_synnav("train", "-b", "esmc600m", "-d", small_dataset, "--epochs", "1"))
    assert "data/weights/esmc_600m_2024_12_v0.pth of EvolutionaryScale/esmc-600m-2024-12 is damaged" in line
    assert "synnav cache clear EvolutionaryScale/esmc-600m-2024-12" in line


def test_caching_doc_names_every_weights_repository_and_licence():
    from synnav_cli.plugins import backbone_registry

    doc = (Path(__file__).resolve().parent.parent / "docs" / "caching.md").read_text(encoding="utf-8")
    for backbone_id, backbone in backbone_registry().backbones.items():
        if backbone.weights_repo is None or backbone_id == "tiny":
            continue
        assert f"`{backbone_id}`" in doc, backbone_id
        assert backbone.license in doc, backbone_id
        assert f"`{backbone.weights_repo}`" in doc, backbone.weights_repo
    for setting in ("SYNNAV_CACHE_DIR", "SYNNAV_OFFLINE=1", "HF_HUB_OFFLINE=1", cache.TINY_ENV,
                    "synnav cache list", "synnav cache clear", "hf auth login", "HF_TOKEN"):  # fmt: skip
        assert setting in doc, setting


def test_the_hubs_own_warnings_do_not_add_lines_to_the_error(online):
    """huggingface_hub logs a failed request before raising it; the user gets only synnav's line."""
    import logging

    def download(*args, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("'[Errno -2]' thrown while requesting HEAD")
        raise ConnectionError("[Errno -2] Name or service not known")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.addHandler(handler)
    level_before = hub_logger.level
    try:
        online(download)
        with pytest.raises(UserError, match="Name or service not known"):
            cache.fetch(REPO, ["w.pth"])
    finally:
        hub_logger.removeHandler(handler)
    assert records == []
    assert hub_logger.level == level_before
