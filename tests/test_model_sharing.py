"""synnav models push / pull and --model hf:ORG/NAME, without a network.

A push runs with HfApi's calls replaced by a recorder that keeps exactly what would be uploaded;
those files are then laid out the way huggingface_hub lays out its cache, and the pull path reads
them from there, offline, through the same code as a download.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from checks import one_error_line
from hub_fixture import blob_of, cache_repo, no_network, tiny_hub  # noqa: F401 - fixtures

from synnav_cli import modeldir, paths
from synnav_cli.cli.main import cli
from synnav_cli.sharing import files as sharing_files
from synnav_cli.sharing import pull as pull_module
from synnav_cli.sharing.card import card_header
from synnav_cli.train.config import TrainConfig
from synnav_cli.train.run import train

DATA = Path(__file__).parent / "data"
REPO = "my-lab/tiny-synnav"
PROTEINS = {
    "P1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV",
    "P2": "MSDNELNQSLNELAAKLSEEEARLLELIRRAVDERRKNPSYQLVPEEIQRLLAERGY",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_plugin) -> Path:
    records = json.loads((DATA / "small.json").read_text())[:60]
    data = tmp_path_factory.mktemp("data") / "small60.json"
    data.write_text(json.dumps(records))
    out = tmp_path_factory.mktemp("models") / "tiny-shared"
    train(TrainConfig(backbone="tiny", epochs=1, batch_size=16, learning_rate=3e-3), data, out,
          device="cpu")
    return out


@pytest.fixture
def model(trained) -> Path:
    """The trained model in this test's own models directory."""
    target = paths.models_dir() / trained.name
    shutil.copytree(trained, target)
    return target


class Recorder:
    """Stands in for the Hub: records the repository made and the files one commit uploads."""

    def __init__(self, held=()):
        self.held = set(held)
        self.created = []
        self.commits = []

    def install(self, monkeypatch):
        for name in ("create_repo", "list_repo_files", "create_branch", "upload_folder"):
            monkeypatch.setattr(huggingface_hub.HfApi, name, getattr(self, name))
        monkeypatch.setenv("HF_TOKEN", "hf_recorder")
        return self

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        self.created.append((repo_id, private))

    def list_repo_files(self, repo_id, **kwargs):
        return sorted(self.held)

    def create_branch(self, repo_id, branch, exist_ok=False, **kwargs):
        self.created.append((repo_id, f"branch {branch}"))

    def upload_folder(self, *, repo_id, folder_path, revision=None, delete_patterns=None, **kwargs):
        uploaded = {p.name: p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        self.commits.append(SimpleNamespace(repo_id=repo_id, files=uploaded, revision=revision,
                                            delete_patterns=delete_patterns))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{'c' * 40}")

    @property
    def files(self) -> dict[str, bytes]:
        return self.commits[-1].files


def _fasta(path: Path) -> Path:
    path.write_text("".join(f">{k}\n{v}\n" for k, v in PROTEINS.items()))
    return path


def _push(runner, monkeypatch, model: Path, *args, recorder=None):
    recorder = (recorder or Recorder()).install(monkeypatch)
    return runner.invoke(cli, ["models", "push", model.name, REPO, *args]), recorder


def _manifest(files: dict[str, bytes]) -> bytes:
    entries = {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}
    return json.dumps({"synnav_files": 1, "files": entries}).encode()


def test_names_agree_with_model_directories():
    assert sharing_files.METADATA_FILE == modeldir.METADATA_FILE
    assert sharing_files.WEIGHTS_FILE == modeldir.WEIGHTS_FILE


def test_push_uploads_exactly_the_listed_files_and_a_card(runner, monkeypatch, model):
    meta = json.loads((model / "synnav-model.json").read_text())
    meta["files"] = ["extra-index.json"]  # a file another part of synnav lists
    (model / "synnav-model.json").write_text(json.dumps(meta))
    (model / "extra-index.json").write_text('{"domains": []}')
    (model / "notes.pt").write_bytes(b"not listed, not uploaded")

    result, recorder = _push(runner, monkeypatch, model, "--private")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"https://huggingface.co/{REPO}/commit/{'c' * 40}"
    assert "notes.pt" in result.stderr
    assert recorder.created == [(REPO, True)]
    commit = recorder.commits[0]
    assert commit.delete_patterns == "*" and commit.revision is None
    assert sorted(commit.files) == sorted(
        ["synnav-model.json", "model.safetensors", "extra-index.json", "synnav-files.json", "README.md"]
    )
    for name in ("synnav-model.json", "model.safetensors", "extra-index.json"):
        assert commit.files[name] == (model / name).read_bytes()
    manifest = json.loads(commit.files["synnav-files.json"])["files"]
    assert manifest["model.safetensors"]["sha256"] == hashlib.sha256(
        (model / "model.safetensors").read_bytes()).hexdigest()

    card = huggingface_hub.ModelCard(commit.files["README.md"].decode())
    assert card.data.license == "mit" and card.data.library_name == "synnav"
    assert "synnav" in card.data.tags
    text = card.text
    for label, threshold in meta["thresholds"].items():
        assert f"| {label} | {threshold:.3f} |" in text
    test_mean = meta["metrics"]["test"]["mean"]
    assert f"| test | {test_mean['f1']:.3f} | {test_mean['roc_auc']:.3f} |" in text
    assert meta["data"]["sha256"] in text and meta["data"]["split_sha256"] in text
    assert f"torch {meta['versions']['torch']}" in text
    assert f"--model hf:{REPO}" in text and f"| batch_size | {meta['config']['batch_size']} |" in text


def test_push_to_a_branch_creates_it(runner, monkeypatch, model):
    result, recorder = _push(runner, monkeypatch, model, "--revision", "v1")
    assert result.exit_code == 0, result.output
    assert (REPO, "branch v1") in recorder.created and recorder.commits[0].revision == "v1"


@pytest.mark.parametrize(
    "backbone, licence, base",
    [
        ("esmc600m", "cambrian-non-commercial-license-agreement", "EvolutionaryScale/esmc-600m-2024-12"),
        ("esmc300m", "cambrian-open-license-agreement", "EvolutionaryScale/esmc-300m-2024-12"),
        ("esm2_8m", None, "facebook/esm2_t6_8M_UR50D"),
    ],
)
def test_card_states_the_licence_of_the_weights(backbone, licence, base):
    header = card_header({"backbone": backbone})
    assert header["base_model"] == base
    if licence is None:
        assert header["license"] == "mit"
    else:
        assert header["license"] == "other" and header["license_name"] == licence
        assert header["license_link"].startswith("https://www.evolutionaryscale.ai/policies/")


def test_push_refuses_a_pickle_posing_as_safetensors(runner, monkeypatch, model):
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    (model / "model.safetensors").write_bytes(buffer.getvalue())
    result, recorder = _push(runner, monkeypatch, model)
    one_error_line(result, "model.safetensors is a zip archive")
    assert recorder.commits == []


def test_a_safetensors_header_length_ending_in_0x80_is_not_a_pickle(tmp_path):
    # The first byte of a safetensors file is the low byte of its header's length; 0x80 (a
    # pickle's first byte) is a valid one and must not be refused.
    from safetensors.torch import save_file

    path = tmp_path / "index.safetensors"
    for padding in range(400):
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * padding})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert sharing_files.content_problem(path, path.name, path.stat().st_size) is None
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(b"\x80\x04\x95" + bytes(64))
    assert "is a pickle" in sharing_files.content_problem(pickled, pickled.name, 67)


def test_push_refuses_unlisted_kinds_and_needs_a_token(runner, monkeypatch, model):
    meta = json.loads((model / "synnav-model.json").read_text())
    (model / "synnav-model.json").write_text(json.dumps({**meta, "files": ["calibration.pkl"]}))
    result, _ = _push(runner, monkeypatch, model)
    one_error_line(result, "'calibration.pkl' is not one of the kinds shared")

    (model / "synnav-model.json").write_text(json.dumps(meta))
    recorder = Recorder().install(monkeypatch)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(model.parent / "no-hf-home"))
    result = runner.invoke(cli, ["models", "push", model.name, REPO])
    one_error_line(result, "no Hugging Face token", "hf auth login")
    assert recorder.commits == []


def test_push_refuses_a_repository_holding_something_else(runner, monkeypatch, model):
    result, recorder = _push(runner, monkeypatch, model, recorder=Recorder({"config.json", "README.md"}))
    one_error_line(result, "not a synnav model", "config.json")
    assert recorder.commits == []


def test_round_trip_push_pull_predict_gives_the_same_tsv(runner, monkeypatch, model, tiny_hub, tmp_path):
    fasta = _fasta(tmp_path / "p.fasta")
    local = runner.invoke(cli, ["predict", str(fasta), "--model", model.name, "--device", "cpu"])
    assert local.exit_code == 0, local.output
    # The trained model's domain index travels too: its domain column is filled, here and pulled.
    rows = local.stdout.splitlines()
    assert rows[0].endswith("\tdomain") and not any(row.endswith("\tunknown") for row in rows[1:])

    result, recorder = _push(runner, monkeypatch, model)
    assert result.exit_code == 0, result.output
    cache_repo(tiny_hub, REPO, recorder.files)

    pulled = runner.invoke(cli, ["predict", str(fasta), "--model", f"hf:{REPO}", "--device", "cpu"])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout == local.stdout
    registered = paths.models_dir() / "my-lab--tiny-synnav"
    assert (registered / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert not (registered / "README.md").exists()

    # Second use: the registered copy, even with the hub cache gone.
    shutil.rmtree(tiny_hub)
    again = runner.invoke(cli, ["predict", str(fasta), "--model", f"hf:{REPO}", "--device", "cpu"])
    assert again.exit_code == 0 and again.stdout == local.stdout and "Pulling" not in again.stderr

    assert runner.invoke(cli, ["models", "default", f"hf:{REPO}"]).exit_code == 0
    default = runner.invoke(cli, ["predict", str(fasta), "--device", "cpu"])
    assert default.exit_code == 0 and default.stdout == local.stdout

    listing = json.loads(runner.invoke(cli, ["models", "list", "--json"]).stdout)
    sources = {entry["name"]: entry["source"] for entry in listing}
    assert sources[model.name] == "trained here" and sources["bundled"] == "bundled"
    assert sources["my-lab--tiny-synnav"].startswith(f"hf:{REPO}@main (")


def test_pull_command_registers_under_a_name(runner, monkeypatch, model, tiny_hub):
    _result, recorder = _push(runner, monkeypatch, model)
    snapshot = cache_repo(tiny_hub, REPO, recorder.files, ref="v2")
    result = runner.invoke(cli, ["models", "pull", f"{REPO}@v2", "--name", "shared"])
    assert result.exit_code == 0, result.output
    folder = paths.models_dir() / "shared"
    assert result.stdout == f"shared\t{folder}\n"
    source = json.loads((folder / "synnav-source.json").read_text())
    # The registered copy shares the download's bytes (a hard link), not a second copy.
    assert (folder / "model.safetensors").stat().st_ino == blob_of(snapshot / "model.safetensors").stat().st_ino
    assert source == {**source, "repo": REPO, "revision": "v2", "commit": snapshot.name}
    shown = runner.invoke(cli, ["models", "show", "shared", "--json"])
    shown = json.loads(shown.stdout)
    assert shown["path"] == str(folder) and shown["source"] == f"hf:{REPO}@v2 ({snapshot.name[:12]})"
    # A name that holds a model of another origin is never replaced.
    clash = runner.invoke(cli, ["models", "pull", f"{REPO}@v2", "--name", model.name])
    one_error_line(clash, "already exists", "--name")
    assert (model / "synnav-model.json").is_file() and not (model / "synnav-source.json").exists()


def test_offline_without_a_pull_names_the_command(runner, tiny_hub, tmp_path):
    fasta = _fasta(tmp_path / "p.fasta")
    for args in (["predict", str(fasta)], ["evaluate"], ["embed", str(fasta), "-o", str(tmp_path / "e.npz")]):
        result = runner.invoke(cli, [*args, "--model", "hf:my-lab/absent@v3"])
        one_error_line(result, "offline", "`synnav models pull my-lab/absent@v3`")


def _good_files(runner, monkeypatch, model) -> dict[str, bytes]:
    _result, recorder = _push(runner, monkeypatch, model)
    return dict(recorder.files)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def _crafted(kind: str, files: dict[str, bytes]) -> tuple[dict[str, bytes], str]:
    """A repository built to be refused, and a phrase of the one line that refuses it."""
    weights = {n: d for n, d in files.items() if n not in ("synnav-files.json", "README.md")}
    if kind == "pickle file":
        weights["model.pkl"] = b"\x80\x04K\x01."
        return {**weights, "synnav-files.json": _manifest(weights)}, "'model.pkl' is not one of the kinds"
    if kind == "pickle as safetensors":
        weights["model.safetensors"] = b"\x80\x04\x95" + b"\x00" * 64
        return {**weights, "synnav-files.json": _manifest(weights)}, "model.safetensors is a pickle"
    if kind == "path traversal":
        manifest = json.loads(_manifest(weights))
        manifest["files"]["../../escape.json"] = {"size": 2, "sha256": "0" * 64}
        return {**weights, "synnav-files.json": json.dumps(manifest).encode()}, "not a plain file name"
    if kind == "zip as safetensors":
        weights["model.safetensors"] = _zip_bytes()
        return {**weights, "synnav-files.json": _manifest(weights)}, "is a zip archive"
    if kind == "10 GB header":
        weights["model.safetensors"] = (10 * 10**9).to_bytes(8, "little") + b"{}"
        return {**weights, "synnav-files.json": _manifest(weights)}, "declares a 10,000,000,000-byte header"
    if kind == "huge declared size":
        manifest = json.loads(_manifest(weights))
        manifest["files"]["model.safetensors"]["size"] = 100 << 30
        return {**weights, "synnav-files.json": json.dumps(manifest).encode()}, "over the"
    if kind == "wrong hash":
        manifest = json.loads(_manifest(weights))
        manifest["files"]["model.safetensors"]["sha256"] = "f" * 64
        return {**weights, "synnav-files.json": json.dumps(manifest).encode()}, "does not match the sha256"
    if kind == "unlisted by the metadata":
        weights["stray.json"] = b"{}"
        return {**weights, "synnav-files.json": _manifest(weights)}, "but its metadata lists"
    if kind == "damaged metadata":
        meta = json.loads(weights["synnav-model.json"])
        weights["synnav-model.json"] = json.dumps({**meta, "labels": []}).encode()
        return {**weights, "synnav-files.json": _manifest(weights)}, "'labels' must be a non-empty list"
    assert kind == "not a synnav model"
    return {"config.json": b"{}", "pytorch_model.bin": _zip_bytes()}, "is not a synnav model"


@pytest.mark.parametrize(
    "kind",
    ["pickle file", "pickle as safetensors", "path traversal", "zip as safetensors", "10 GB header",
     "huge declared size", "wrong hash", "unlisted by the metadata", "damaged metadata",
     "not a synnav model"],
)
def test_crafted_repository_is_refused_in_one_line(runner, monkeypatch, model, tiny_hub, tmp_path, kind):
    files, phrase = _crafted(kind, _good_files(runner, monkeypatch, model))
    cache_repo(tiny_hub, REPO, files)
    before = sorted(p.name for p in paths.models_dir().iterdir())
    result = runner.invoke(cli, ["models", "pull", REPO])
    one_error_line(result, phrase)
    assert sorted(p.name for p in paths.models_dir().iterdir()) == before
    assert not (tmp_path / "escape.json").exists()
    fasta = _fasta(tmp_path / "p.fasta")
    one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", f"hf:{REPO}"]), phrase)


def test_offline_flag_alone_keeps_hf_names_off_the_network(runner, tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SYNNAV_OFFLINE", raising=False)
    fasta = _fasta(tmp_path / "p.fasta")
    result = runner.invoke(cli, ["predict", str(fasta), "--offline", "--model", "hf:my-lab/absent"])
    one_error_line(result, "offline", "`synnav models pull my-lab/absent`")


@pytest.mark.parametrize("hub_size", ["as declared", "larger"])
def test_online_pull_compares_the_hubs_sizes_first(runner, monkeypatch, model, tiny_hub, hub_size):
    """Online, the Hub's file listing (replaced here) must agree with the manifest before any
    listed file is fetched; the files themselves come from the cache, so nothing is downloaded."""
    files = _good_files(runner, monkeypatch, model)
    snapshot = cache_repo(tiny_hub, REPO, files)
    sizes = {name: len(data) for name, data in files.items()}
    if hub_size == "larger":
        sizes["model.safetensors"] += 1
    fetched = []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("SYNNAV_OFFLINE")
    monkeypatch.setattr("synnav_cli.sharing.pull.remote_files", lambda repo, rev: (snapshot.name, sizes))
    real_fetch = pull_module.hub.fetch
    monkeypatch.setattr(pull_module.hub, "fetch", lambda repo, names, **kw: fetched.append(list(names)) or real_fetch(repo, names, **kw))
    result = runner.invoke(cli, ["models", "pull", REPO])
    if hub_size == "larger":
        one_error_line(result, "the Hub holds model.safetensors as", "where its manifest says")
        assert fetched == [["synnav-files.json"]]
    else:
        assert result.exit_code == 0, result.output
        assert fetched[0] == ["synnav-files.json"] and "model.safetensors" in fetched[1]


def test_one_pull_at_a_time(runner, monkeypatch, model, tiny_hub, tmp_path):
    """`models pull` refuses while another process pulls the same repository; `--model hf:` waits
    for that pull and then uses the model (array jobs starting together pull once)."""
    import threading

    _result, recorder = _push(runner, monkeypatch, model)
    cache_repo(tiny_hub, REPO, recorder.files)
    held = pull_module._pull_lock(pull_module.parse_ref(REPO))
    assert held is not None
    one_error_line(runner.invoke(cli, ["models", "pull", REPO]), "another synnav process is pulling")

    release = threading.Timer(1.0, held.close)
    release.start()
    fasta = _fasta(tmp_path / "p.fasta")
    result = runner.invoke(cli, ["predict", str(fasta), "--model", f"hf:{REPO}", "--device", "cpu"])
    release.join()
    assert result.exit_code == 0, result.output
    assert "Waiting for another synnav process" in result.stderr and "Pulled hf:" in result.stderr


def test_dry_run_prints_the_card_and_uploads_nothing(runner, monkeypatch, model):
    recorder = Recorder().install(monkeypatch)
    monkeypatch.delenv("HF_TOKEN")
    result = runner.invoke(cli, ["models", "push", model.name, REPO, "--revision", "v1", "--dry-run"])
    assert result.exit_code == 0, result.output
    card = huggingface_hub.ModelCard(result.stdout)
    assert card.data.library_name == "synnav" and f"--model hf:{REPO}@v1" in card.text
    assert "Would push" in result.stderr and recorder.commits == [] and recorder.created == []


def _http_error(status: int) -> Exception:
    from huggingface_hub.errors import HfHubHTTPError

    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return HfHubHTTPError(f"{status} Client Error: refused", response=response)


@pytest.mark.parametrize(
    "failure, phrase",
    [
        (_http_error(401), "rejected the token"),
        (_http_error(403), "needs write access"),
        (_http_error(500), "the Hugging Face Hub failed while uploading to"),
        (ConnectionError("connection reset"), "network failure while uploading to"),
    ],
)
def test_a_failed_upload_is_one_line(runner, monkeypatch, model, failure, phrase):
    recorder = Recorder()

    def upload_folder(*args, **kwargs):  # set on HfApi, so it is called as a method
        raise failure

    recorder.upload_folder = upload_folder
    result, _ = _push(runner, monkeypatch, model, recorder=recorder)
    one_error_line(result, phrase, REPO)


def test_online_pull_of_a_missing_repository_is_one_line(runner, monkeypatch, tiny_hub):
    from huggingface_hub.errors import RepositoryNotFoundError

    def model_info(*args, **kwargs):  # set on HfApi, so it is called as a method
        raise RepositoryNotFoundError("404 Client Error", response=SimpleNamespace(
            status_code=404, headers={}, request=None))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("SYNNAV_OFFLINE")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    one_error_line(runner.invoke(cli, ["models", "pull", "my-lab/nothing"]),
                   "my-lab/nothing was not found", "hf auth login")


@pytest.mark.parametrize("client", ["httpx", "httpx2", "requests.exceptions"])
def test_online_pull_without_a_network_is_one_line(runner, monkeypatch, tiny_hub, client):
    # The HTTP client's own exception class (not a builtin ConnectionError), as huggingface_hub
    # raises it when the Hub cannot be reached.
    connect_error = type("ConnectError", (Exception,), {"__module__": client})

    def model_info(*args, **kwargs):  # set on HfApi, so it is called as a method
        raise connect_error("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("SYNNAV_OFFLINE")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    one_error_line(runner.invoke(cli, ["models", "pull", "my-lab/nothing"]),
                   "network failure while reading my-lab/nothing", "Name or service not known")


@pytest.mark.parametrize("ref", ["no-org", "a/b/c", "my-lab/x@../../etc", "my-lab/x@"])
def test_a_malformed_hub_name_is_one_line(runner, ref):
    result = runner.invoke(cli, ["models", "pull", ref])
    one_error_line(result)
    assert "ORG/NAME" in result.stderr or "branch, tag or commit" in result.stderr


def test_card_of_a_frozen_esm_model_says_where_the_encoder_comes_from():
    from synnav_cli.sharing.card import model_card

    meta = {"backbone": "esmc600m", "labels": ["ER"], "thresholds": {"ER": 0.5}, "encoder_frozen": True}
    card = huggingface_hub.ModelCard(model_card(meta, REPO, {}, "frozen-esmc"))
    assert card.data.license == "other" and card.data.base_model == "EvolutionaryScale/esmc-600m-2024-12"
    assert "head only (encoder frozen)" in card.text
    assert "encoder's weights come from `EvolutionaryScale/esmc-600m-2024-12`" in card.text
    assert "Cambrian Non-Commercial" in card.text


def test_a_file_added_after_saving_travels_once_listed(runner, monkeypatch, model):
    (model / "added-later.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    result, recorder = _push(runner, monkeypatch, model)
    assert "added-later.safetensors" in result.stderr and "added-later.safetensors" not in recorder.files

    sharing_files.list_model_file(model, "added-later.safetensors")
    sharing_files.list_model_file(model, "added-later.safetensors")  # listed once, however often
    listed = json.loads((model / "synnav-model.json").read_text())["files"]
    assert listed == ["domain.safetensors", "added-later.safetensors"]
    result, recorder = _push(runner, monkeypatch, model)
    assert result.exit_code == 0, result.output
    assert recorder.files["added-later.safetensors"] == (model / "added-later.safetensors").read_bytes()
    with pytest.raises(ValueError):
        sharing_files.list_model_file(model, "../outside.json")


def test_models_show_says_where_a_model_came_from(runner, model):
    shown = runner.invoke(cli, ["models", "show", model.name])
    assert shown.exit_code == 0 and "source:         trained here" in shown.stdout.splitlines()
    bundled = runner.invoke(cli, ["models", "show", "bundled"])
    assert "source:         bundled" in bundled.stdout.splitlines()
