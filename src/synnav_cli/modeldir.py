"""Trained model directories: self-describing, written atomically, found by path or name.

A model directory holds ``synnav-model.json`` (backbone, labels, thresholds, metrics, config,
data and split hashes, versions) and ``model.safetensors``. When the encoder was frozen only the
head is stored and the encoder comes from the backbone's published weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from synnav_cli import paths
from synnav_cli.atomic import write_text_atomic
from synnav_cli.errors import UserError
from synnav_cli.model import LocalizationModel
from synnav_cli.plugins import get_backbone
from synnav_cli.resources import bundled_model_path

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


def write_json_atomic(path: Path, payload: object) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_model_dir(
    out: Path, model: LocalizationModel, meta: dict, *, encoder_frozen: bool, force: bool = False
) -> Path:
    """Write the model directory in a temporary sibling, then rename it into place.

    An existing directory is replaced only with ``force``, and even then the old one is moved
    aside first and removed only once the new one is in place.
    """
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        state = model.head.state_dict() if encoder_frozen else model.state_dict()
        prefix = "head." if encoder_frozen else ""
        tensors = {prefix + k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(tensors, str(staging / WEIGHTS_FILE))
        meta = {**meta, "format_version": FORMAT_VERSION, "encoder_frozen": encoder_frozen}
        write_json_atomic(staging / METADATA_FILE, meta)
        if out.exists():
            retired = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, retired)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_model_info(path: Path) -> ModelInfo:
    metadata = path / METADATA_FILE
    if not metadata.is_file():
        raise UserError(f"{path} is not a synnav model directory (no {METADATA_FILE})")
    try:
        meta = json.loads(metadata.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{metadata} is damaged: {error}") from None
    return ModelInfo(path, meta)


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
            except UserError:
                continue
    found.sort(key=lambda info: info.meta.get("created", ""), reverse=True)
    return found


def resolve_model(name: str | None) -> tuple[ModelInfo, str]:
    """Find a model by directory, by name under the models directory, or the default.

    Returns the model and how it was chosen ("given", "latest" or "bundled"), so the caller can
    tell the user.
    """
    if name:
        candidate = Path(name).expanduser()
        if (candidate / METADATA_FILE).is_file():
            return read_model_info(candidate), "given"
        named = paths.models_dir() / name
        if (named / METADATA_FILE).is_file():
            return read_model_info(named), "given"
        bundled = bundled_model_path()
        if bundled is not None and name == BUNDLED_NAME:
            return read_model_info(bundled), "bundled"
        known = ", ".join(info.name for info in list_models()) or "none"
        raise UserError(f"no model {name!r}: not a model directory, nor a name in "
                        f"{paths.models_dir()} (trained models: {known})")
    models = list_models()
    if models:
        return models[0], "latest"
    bundled = bundled_model_path()
    if bundled is not None:
        return read_model_info(bundled), "bundled"
    raise UserError("no trained model found; train one with `synnav train` or pass --model")


def load_model(info: ModelInfo, device: torch.device, *, offline: bool = False) -> LocalizationModel:
    """Rebuild the network a model directory describes and load its weights."""
    backbone = get_backbone(info.meta["backbone"])
    recorded = info.meta.get("backbone_fingerprint")
    if recorded is not None and recorded != backbone.fingerprint():
        raise UserError(f"{info.path} was trained on backbone variant {recorded!r}, but {backbone.id} is "
                        f"{backbone.fingerprint()!r} here (is a setting such as SYNNAV_TEST_TINY_BACKBONES "
                        "different from training?)")
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
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # torch lists every mismatched tensor over many lines; the first one says enough.
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        first = details[0] if details else str(error)
        raise UserError(f"{weights} does not fit backbone {backbone.id}: {first}{more}") from None
    return model.to(device).eval()
