"""Trained model directories: self-describing, written atomically, found by path or name.

A model directory holds ``synnav-model.json`` (backbone, labels, thresholds, metrics, config,
data and split hashes, versions) and ``model.safetensors``. When the encoder was frozen only the
head is stored and the encoder comes from the backbone's published weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from synnav_cli import console, paths
from synnav_cli.backbones.base import Backbone
from synnav_cli.calibration import Calibration, calibration_problem
from synnav_cli.errors import UserError, did_you_mean, quoted
from synnav_cli.files import save_tensors, temporary_dir, write_json_atomic
from synnav_cli.model import LocalizationModel
from synnav_cli.resources import bundled_model_path
from synnav_cli.weights import integrity

METADATA_FILE = "synnav-model.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
BUNDLED_NAME = "bundled"  # what --model accepts for the model that ships with the package


@dataclass
class ModelInfo:
    path: Path
    meta: dict

    @property
    def name(self) -> str:
        # The bundled model lives in a folder called "model"; users select it as "bundled".
        if self.path == bundled_model_path():
            return BUNDLED_NAME
        return self.path.name

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def thresholds(self) -> list[float]:
        return [float(self.meta["thresholds"][name]) for name in self.label_names]

    @property
    def calibration(self) -> Calibration | None:
        """The per-label calibration fitted on dev; None: the scores are shown uncalibrated."""
        return Calibration.from_meta(self.meta.get("calibration"), self.label_names)


def is_model_dir(path: Path) -> bool:
    """A real directory (not a link to one) that holds a synnav metadata file."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / METADATA_FILE).is_file()


def check_replaceable(out: Path, force: bool) -> None:
    """Refuse to replace ``out`` unless ``force`` is given and ``out`` is a synnav model directory.

    ``--force`` exists to retrain a model in place; it must never delete a source tree or any
    other folder that happens to be named on the command line. A model directory is one whose
    metadata passes the checks ``predict`` applies (an empty ``synnav-model.json`` does not).
    """
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise UserError(f"{out} already exists; choose another --out or pass --force")
    try:
        valid = is_model_dir(out) and bool(read_model_info(out))
    except (UserError, OSError):
        valid = False
    if not valid:
        raise UserError(
            f"{out} exists and is not a synnav model directory; --force replaces "
            "only model directories, so choose another --out"
        )


def save_model_dir(
    out: Path, model: LocalizationModel, meta: dict, *, encoder_frozen: bool, force: bool = False
) -> Path:
    """Write the model directory in a temporary sibling, then rename it into place.

    An existing directory is replaced only with ``force``, and even then the old one is moved
    aside first and removed only once the new one is in place.
    """
    out = Path(out)
    check_replaceable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        state = model.head.state_dict() if encoder_frozen else model.state_dict()
        prefix = "head." if encoder_frozen else ""
        tensors = {prefix + k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_tensors(staging / WEIGHTS_FILE, tensors)
        meta = {**meta, "format_version": FORMAT_VERSION, "encoder_frozen": encoder_frozen}
        write_json_atomic(staging / METADATA_FILE, meta)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` goes only once the new one is there."""
    if out.exists():
        retired = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)


def copy_model_dir(info: ModelInfo, out: Path, meta: dict, *, force: bool = False) -> Path:
    """Copy the model directory ``info`` to ``out`` (may be ``info.path``) with metadata ``meta``,
    staged and renamed into place as :func:`save_model_dir` does."""
    out = Path(out)
    check_replaceable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        # Links are copied as links, never followed (a model directory is read as hostile).
        ignore = shutil.ignore_patterns(METADATA_FILE)
        shutil.copytree(info.path, staging, symlinks=True, dirs_exist_ok=True, ignore=ignore)
        write_json_atomic(staging / METADATA_FILE, meta)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_model_info(path: Path) -> ModelInfo:
    """The metadata of the model directory ``path``, checked before anything relies on it."""
    metadata = path / METADATA_FILE
    if not metadata.is_file():
        raise UserError(f"{path} is not a synnav model directory (no {METADATA_FILE})")
    try:
        meta = json.loads(metadata.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{metadata} is damaged: {error}") from None
    except RecursionError:
        raise UserError(f"{metadata} is damaged: nested too deeply") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if type(version) is int and version > FORMAT_VERSION:
        # Read on, a newer layout's meaning would be guessed; refuse it instead, by name.
        raise UserError(
            f"{path} was saved in model format {version} by a newer synnav; this one reads "
            f"format {FORMAT_VERSION}: upgrade synnav to use it"
        )
    problem = metadata_problem(meta)
    if problem:
        raise UserError(f"{metadata} is damaged: {problem}")
    return ModelInfo(path, meta)


def metadata_problem(meta: object) -> str | None:
    """What is wrong with a model's metadata, or None; checks what loading and scoring use."""
    if not isinstance(meta, dict):
        return "expected a JSON object"
    backbone = meta.get("backbone")
    if not isinstance(backbone, str) or not backbone:
        return "'backbone' must name a backbone"
    labels = meta.get("labels")
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(n, str) and n for n in labels)
    ):
        return "'labels' must be a non-empty list of names"
    if len(set(labels)) != len(labels):
        return "'labels' names a label twice"
    unprintable = next((name for name in labels if not name.isprintable()), None)
    if unprintable is not None:
        # Labels reach the output's header, its predicted column and the terminal: an escape
        # sequence, tab, newline or bidirectional override there would forge what is shown.
        return f"the label {quoted(unprintable)} contains control characters"
    thresholds = meta.get("thresholds")
    if not isinstance(thresholds, dict):
        return "'thresholds' must map each label to a number"
    for name in labels:
        value = thresholds.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0.0 <= value <= 1.0
        ):
            return f"the threshold of {quoted(name)} must be a number between 0 and 1"
    if meta.get("calibration") is not None:
        problem = calibration_problem(meta["calibration"], labels)
        if problem:
            return f"'calibration': {problem}"
    config = meta.get("config", {})
    if not isinstance(config, dict):
        return "'config' must be an object"
    max_length = config.get("max_length")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        return f"'max_length' must be a whole number of at least 1, not {quoted(max_length)}"
    version = meta.get("format_version", FORMAT_VERSION)
    if type(version) is not int or version < 1:
        return f"'format_version' must be a whole number of at least 1, not {quoted(version)}"
    return _description_problem(meta)


def _description_problem(meta: dict) -> str | None:
    """What is wrong with the parts of the metadata that `models list` and `models show` print
    (data, metrics, versions, when it was made), or None."""
    for key in ("metrics", "data", "versions", "trained_on"):
        if not isinstance(meta.get(key, {}), dict):
            return f"'{key}' must be an object"
    test = meta.get("metrics", {}).get("test", {})
    if (
        not isinstance(test, dict)
        or not isinstance(test.get("mean") or {}, dict)
        or not isinstance(test.get("labels", {}), dict)
        or not all(isinstance(m, dict) for m in test.get("labels", {}).values())
    ):
        return "'metrics' must hold the test metrics as objects"
    data = meta.get("data", {})
    if not all(isinstance(data.get(key) or {}, dict) for key in ("proteins", "label_counts")):
        return "'data' must count proteins and labels in objects"
    texts = {
        "created": meta.get("created"),
        **{k: data.get(k) for k in ("path", "sha256", "split_sha256")},
    }
    wrong = next((k for k, v in texts.items() if v is not None and not isinstance(v, str)), None)
    if wrong is not None:
        return f"{quoted(wrong)} must be text"
    if not isinstance(meta.get("history", []), list):
        return "'history' must be a list"
    return None


def list_models() -> list[ModelInfo]:
    """Trained models in the user's model directory, newest first."""
    root = paths.models_dir()
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".") or not (child / METADATA_FILE).is_file():
                continue
            try:
                found.append(read_model_info(child))
            except UserError as error:
                # One damaged directory must not hide the others (or break `predict`).
                console.warn(f"skipping {child}: {error}")
    found.sort(key=lambda info: info.meta.get("created", ""), reverse=True)
    return found


DEFAULT_FILE = "default-model.json"  # in the user data directory; set by `synnav models default`


def default_model_path() -> Path:
    return paths.data_dir() / DEFAULT_FILE


def read_default_model() -> str | None:
    """The model set with `synnav models default`, as given there (a name or a directory)."""
    path = default_model_path()
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError, RecursionError):
        name = None
    if not isinstance(name, str) or not name:
        console.warn(
            f"{path} is damaged; using the bundled model (set one with `synnav models default`)"
        )
        return None
    return name


def set_default_model(name: str | None) -> ModelInfo | None:
    """Make ``name`` the model `predict` and `evaluate` use without --model; None: the bundled one.

    A trained model is recorded by its absolute directory, so the choice survives a change of
    working directory.
    """
    if name is None:
        default_model_path().unlink(missing_ok=True)
        return None
    info, _how = resolve_model(name)
    chosen = BUNDLED_NAME if info.name == BUNDLED_NAME else str(info.path.resolve())
    write_json_atomic(default_model_path(), {"model": chosen})
    return info


def resolve_model(name: str | None, *, offline: bool = False) -> tuple[ModelInfo, str]:
    """Find a model by directory, by name under the models directory, or the default.

    Without a name: the model set with `synnav models default`, else the bundled one; a newly
    trained model never becomes the default by itself. ``hf:ORG/NAME[@REV]`` is a model on the
    Hugging Face Hub, pulled on first use (``offline``: only one pulled before). Returns the
    model and how it was chosen ("given", "default" or "bundled"), so the caller can tell the user.
    """
    if name and name.startswith("hf:"):
        from synnav_cli.sharing.pull import resolve_hf

        return read_model_info(resolve_hf(name, validate=read_model_info, offline=offline)), "given"
    if name:
        candidate = Path(name).expanduser()
        if _holds_metadata(candidate):
            return read_model_info(candidate), "given"
        named = paths.models_dir() / name
        if _holds_metadata(named):
            return read_model_info(named), "given"
        bundled = bundled_model_path()
        if bundled is not None and name == BUNDLED_NAME:
            return read_model_info(bundled), "bundled"
        names = [info.name for info in list_models()]
        known = ", ".join(names) or "none"
        if bundled is not None:
            known += f"; and `{BUNDLED_NAME}`, the model that ships with synnav"
            names.append(BUNDLED_NAME)
        raise UserError(
            f"no model {quoted(name)}: not a model directory, nor a name in "
            f"{paths.models_dir()} (trained models: {known})." + did_you_mean(name, names)
        )
    chosen = read_default_model()
    if chosen is not None:
        try:
            info, _how = resolve_model(chosen)
        except UserError:
            raise UserError(
                f"the default model {quoted(chosen)} no longer exists; choose another with "
                "`synnav models default NAME` (or `--clear` for the bundled one)"
            ) from None
        return info, "bundled" if info.name == BUNDLED_NAME else "default"
    bundled = bundled_model_path()
    if bundled is not None:
        return read_model_info(bundled), "bundled"
    raise UserError(
        "no model to use: train one with `synnav train` and pass --model, or set one "
        "with `synnav models default NAME`"
    )


def _holds_metadata(folder: Path) -> bool:
    try:
        return (folder / METADATA_FILE).is_file()
    except OSError:  # a name too long for the filesystem, say: no model there either
        return False


def load_model(
    info: ModelInfo, backbone: Backbone, device: torch.device, *, offline: bool = False
) -> LocalizationModel:
    """Rebuild the network a model directory describes on ``backbone`` and load its weights.

    The caller looks the backbone up (``plugins.get_backbone(info.meta["backbone"])``) once and
    passes it here; see ``scoring.load`` for the whole load path.
    """
    recorded = info.meta.get("backbone_fingerprint")
    if recorded is not None and recorded != backbone.fingerprint():
        raise UserError(
            f"{info.path} was trained on backbone variant {recorded!r}, but {backbone.id} is "
            f"{backbone.fingerprint()!r} here: use the synnav version (and settings such as "
            "SYNNAV_TEST_TINY_BACKBONES) it was trained with, or train it again"
        )
    frozen = bool(info.meta.get("encoder_frozen"))
    encoder = backbone.build_encoder(pretrained=frozen, offline=offline)
    model = LocalizationModel(encoder, backbone.embedding_dim, len(info.label_names))
    weights = info.path / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{info.path} has no {WEIGHTS_FILE}; the model directory is incomplete")
    try:
        state = load_file(str(weights))
    except Exception as error:  # noqa: BLE001 - safetensors raises several types
        raise UserError(f"{weights} is damaged: {error}") from None
    if frozen:
        state = {k.removeprefix("head."): v for k, v in state.items()}
        target = model.head
    else:
        target = model
    # synnav saves the module's own tensors: another dtype means a converted file.
    problem = integrity.tensor_mismatch(state, target.state_dict())
    if problem is not None:
        raise UserError(f"{weights} is damaged: {problem}")
    broken = next(
        (k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None
    )
    if broken is not None:
        raise UserError(
            f"{weights} is damaged: tensor {quoted(broken)} holds NaN or infinite values"
        )
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # torch lists every mismatched tensor over many lines; the first one says enough.
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        first = details[0] if details else str(error)
        raise UserError(f"{weights} does not fit backbone {backbone.id}: {first}{more}") from None
    return model.to(device).eval()
