"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory passed between people and machines (``--resume``), so nothing in it
may run code when read: ``torch.load`` without ``weights_only`` would unpickle whatever a crafted
file holds. Nested state (model, optimiser, scheduler, scaler and RNG states) is walked once;
each tensor is replaced by a reference into one safetensors file and the rest is plain JSON.

The tensors go to a new file named by their hash, then the JSON that names it replaces the old
JSON atomically, then older tensor files are removed: a kill at any moment leaves one whole
checkpoint, the previous or the new. A truncated or edited file is reported as damage.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from synnav_cli import console
from synnav_cli.errors import UserError
from synnav_cli.files import save_tensors, write_json_atomic

STATE_FILE = "checkpoint.json"
TENSORS_PREFIX = "checkpoint-"
TENSORS_SUFFIX = ".safetensors"
_TENSOR = "__tensor__"
_ITEMS = "__items__"  # a dict whose keys are not all strings (optimiser state is keyed by int)
_TUPLE = "__tuple__"


def _flatten(value: object, tensors: dict[str, torch.Tensor]) -> object:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not ({_TENSOR, _ITEMS, _TUPLE} & set(value)):
            return {k: _flatten(v, tensors) for k, v in value.items()}
        return {_ITEMS: [[k, _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_flatten(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_flatten(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def _restore(value: object, tensors: dict[str, torch.Tensor]) -> object:
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _ITEMS in value:
            return {_key(k): _restore(v, tensors) for k, v in value[_ITEMS]}
        if _TUPLE in value:
            return tuple(_restore(v, tensors) for v in value[_TUPLE])
        return {k: _restore(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, tensors) for v in value]
    return value


def _key(key: object) -> object:
    return tuple(key) if isinstance(key, list) else key


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(directory: Path, state: dict) -> None:
    """Write ``state`` (nested dicts, lists, tuples, numbers, strings, tensors) to ``directory``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    staged = directory / f"{TENSORS_PREFIX}new{TENSORS_SUFFIX}"
    save_tensors(staged, tensors)
    digest = _sha256(staged)
    name = f"{TENSORS_PREFIX}{digest[:16]}{TENSORS_SUFFIX}"
    staged.replace(directory / name)
    write_json_atomic(
        directory / STATE_FILE, {"tensors": name, "tensors_sha256": digest, "state": skeleton}
    )
    for old in directory.glob(f"{TENSORS_PREFIX}*{TENSORS_SUFFIX}"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _gpu(device: torch.device | None) -> torch.device:
    """The GPU whose generator this process draws from: ``device`` when it names one, else the
    current GPU (under torchrun, this rank's: see ``distributed.init``)."""
    if device is not None and device.type == "cuda" and device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device())


def rng_state(device: torch.device | None = None) -> dict:
    """Every random state training draws from (dropout masks, initialisation), storable here.

    Of the GPUs, only the generator of the one this process trains on (see :func:`_gpu`): the
    others' are not drawn from, and a run resumed on fewer GPUs would have nowhere to put them.
    """
    kind, key, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(_gpu(device)) if torch.cuda.is_available() else None,
        "numpy": [
            kind,
            torch.from_numpy(key.astype(np.int64)),
            int(position),
            int(has_gauss),
            float(gauss),
        ],
    }


def restore_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Put back what :func:`rng_state` saved, on any number of GPUs (or none): the saved GPU
    generator becomes this process's GPU's. Under torchrun every rank gets rank 0's, as every
    rank started from the same seed."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        gpu = _gpu(device)
        if isinstance(cuda, list):  # older checkpoints held every visible GPU's, in order
            cuda = cuda[gpu.index] if gpu.index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, gpu)
    kind, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), position, has_gauss, gauss))


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Load fp16 loss scaling's state across a change of precision.

    ``precision auto`` resolves per machine, so a run may resume in another precision than it
    was saved in (bf16 on an A100, fp16 on a V100). A run saved without loss scaling (bf16 or
    fp32: the state is empty) and resumed in fp16 starts scaling afresh from the default scale,
    which the first steps adjust; a run saved in fp16 and resumed without it drops the state.
    Either way one line on stderr says so.
    """
    if not isinstance(state, dict):
        raise TypeError("scaler state")
    if scaler.is_enabled() and not state:
        console.warn(
            "this run was saved without fp16 loss scaling (bf16 or fp32) and resumes in fp16 "
            "here; loss scaling starts afresh"
        )
    elif state and not scaler.is_enabled():
        console.warn(
            "this run was saved in fp16 and resumes in bf16 or fp32 here, without loss scaling"
        )
    else:
        scaler.load_state_dict(state)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """A model's state dict as one safetensors file, replaced atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_tensors(path, tensors)


def load_weights(model: torch.nn.Module, path: Path, workspace: Path) -> None:
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as error:  # noqa: BLE001 - safetensors and torch raise several types
        raise UserError(
            f"{path} is damaged ({type(error).__name__}); delete {workspace} to start over"
        ) from None


def exists(directory: Path) -> bool:
    return (directory / STATE_FILE).is_file()


def load(directory: Path) -> dict:
    """The state :func:`save` wrote; a damaged or mismatched pair is a :class:`UserError`."""
    state_path = directory / STATE_FILE
    try:
        record = json.loads(state_path.read_text(encoding="utf-8"))
        expected, name, skeleton = (
            str(record["tensors_sha256"]),
            str(record["tensors"]),
            record["state"],
        )
        # The name is read from the file: only a plain name of the expected shape is used.
        if Path(name).name != name or not (
            name.startswith(TENSORS_PREFIX) and name.endswith(TENSORS_SUFFIX)
        ):
            raise ValueError("unexpected tensor file name")
        tensors_path = directory / name
    except FileNotFoundError:
        raise UserError(f"no checkpoint in {directory}") from None
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise UserError(
            f"{state_path} is damaged ({type(error).__name__}); delete {directory} to start over"
        ) from None
    if not tensors_path.is_file() or _sha256(tensors_path) != expected:
        raise UserError(
            f"{tensors_path} is damaged (missing, truncated or not the one {STATE_FILE} "
            f"was saved with); delete {directory} to start over"
        )
    try:
        tensors = load_file(str(tensors_path))
        state = _restore(skeleton, tensors)
    except (SafetensorError, KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"the checkpoint in {directory} is damaged ({error}); delete it to start over"
        ) from None
    if not isinstance(state, dict):
        raise UserError(
            f"{state_path} is damaged (expected an object); delete {directory} to start over"
        )
    return state


@dataclass
class Progress:
    """Where a run stands: what a checkpoint records besides the tensors."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps taken in the epoch under way (0 at an epoch's end)
    epoch_loss: float = 0.0  # summed loss of those steps
    best_score: float = -math.inf
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)


def saved_int(saved: dict, key: str, workspace: Path) -> int:
    value = saved.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(
            f"the checkpoint in {workspace} is damaged ({key}); delete the directory to start over"
        )
    return value
