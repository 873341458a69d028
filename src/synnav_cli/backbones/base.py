"""The Backbone contract: everything synnav asks of a protein language model, in one class.

A backbone object is cheap to create: it holds configuration only. The encoder (an
``nn.Module``) is built by :meth:`Backbone.build_encoder`, which is where weights are loaded.
Subclasses must set the class attributes and implement :meth:`Backbone.tokenize` and
:meth:`Backbone.build_encoder`; every other method has a default that a plugin overrides when
its model differs. Nothing outside ``synnav_cli.backbones`` reaches into an encoder's
internals: training, scoring and the memory model ask the backbone through these methods.
docs/plugins.md documents the same contract, and a test keeps the two in step.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synnav_cli.errors import UserError


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through page-locked memory, asynchronously.

    A copy from ordinary (pageable) host memory to a GPU first waits for every kernel already
    queued on the stream, so each batch's input would stall the host until the GPU is idle, and
    the next batch could not be prepared meanwhile. From page-locked memory the copy is queued
    like a kernel. PyTorch's host allocator keeps the page-locked buffer alive until the copy
    has run and reuses it afterwards.
    """
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class TokenBatch:
    """A padded batch of tokenized proteins.

    ``attention_mask`` marks every real token (special tokens included); ``residue_mask`` marks
    only the tokens that stand for residues, which is what mean pooling averages over.
    """

    input_ids: torch.Tensor  # [batch, length] int64, padded
    attention_mask: torch.Tensor  # [batch, length] bool
    residue_mask: torch.Tensor  # [batch, length] bool

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            to_device(self.input_ids, device),
            to_device(self.attention_mask, device),
            to_device(self.residue_mask, device),
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


class Vocabulary:
    """A character-level protein vocabulary with optional ``<cls>``/``<eos>`` framing."""

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        pad: str,
        unk: str,
        cls: str | None = None,
        eos: str | None = None,
    ) -> None:
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}
        self.pad_id = self.index[pad]
        self.unk_id = self.index[unk]
        self.cls_id = self.index[cls] if cls is not None else None
        self.eos_id = self.index[eos] if eos is not None else None
        # A byte lookup table makes tokenizing a long protein one numpy-free torch op.
        table = torch.full((256,), self.unk_id, dtype=torch.int64)
        for token, i in self.index.items():
            if len(token) == 1:
                table[ord(token)] = i
        self._table = table

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, sequence: str) -> torch.Tensor:
        raw = torch.frombuffer(bytearray(sequence.encode("ascii")), dtype=torch.uint8)
        ids = self._table[raw.long()]
        parts = []
        if self.cls_id is not None:
            parts.append(torch.tensor([self.cls_id]))
        parts.append(ids)
        if self.eos_id is not None:
            parts.append(torch.tensor([self.eos_id]))
        return torch.cat(parts) if len(parts) > 1 else ids

    def batch(self, sequences: Sequence[str]) -> TokenBatch:
        """Tokenize and pad ``sequences`` in a handful of array operations, whatever their count.

        A few torch calls per protein took 95-121 ms for a batch of 130 proteins and 64k residues
        on the shared 2-core CPU, of the order of ESM C 600M's forward pass over that batch on an
        H100-class GPU, which then waited; looking all residues up at once and scattering them
        into the padded rows takes 7-8 ms (side by side, same run).
        """
        count = len(sequences)
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=count)
        lead = int(self.cls_id is not None)
        framed = lengths + lead + int(self.eos_id is not None)
        width = int(framed.max()) if count else lead + int(self.eos_id is not None)
        residues = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
        rows = np.repeat(np.arange(count), lengths)
        starts = np.cumsum(lengths) - lengths
        columns = np.arange(len(residues)) - np.repeat(starts, lengths) + lead
        input_ids = np.full((count, width), self.pad_id, dtype=np.int64)
        input_ids[rows, columns] = self._table.numpy()[residues]
        residue_mask = np.zeros((count, width), dtype=bool)
        residue_mask[rows, columns] = True
        if self.cls_id is not None:
            input_ids[:, 0] = self.cls_id
        if self.eos_id is not None:
            input_ids[np.arange(count), lengths + lead] = self.eos_id
        attention_mask = np.arange(width)[None, :] < framed[:, None]
        return TokenBatch(
            torch.from_numpy(input_ids),
            torch.from_numpy(attention_mask),
            torch.from_numpy(residue_mask),
        )


@dataclass(frozen=True)
class EncoderShape:
    """The sizes the memory model needs to estimate a batch's bytes (see ``runtime.hardware``)."""

    width: int  # hidden size
    layers: int
    ffn_hidden: int  # the feed-forward layer's inner size
    ffn_matrices: int = 2  # width x ffn_hidden matrices per layer: 2 plain, 3 gated (SwiGLU)


class Backbone(abc.ABC):
    """A protein language model (or any per-residue encoder) that synnav can fine-tune.

    Subclasses set the class attributes and implement :meth:`tokenize` and
    :meth:`build_encoder`. The encoder's ``forward(input_ids, attention_mask)`` returns
    per-residue embeddings of shape ``[batch, length, embedding_dim]``; positions outside
    ``attention_mask`` may hold anything (they are never read).
    """

    id: str
    embedding_dim: int
    max_length: int  # the most residues one protein may have (special tokens not counted)
    license: str  # the licence the weights carry
    description: str = ""
    weights_repo: str | None = None  # where pretrained weights come from; None: none needed
    # True when build_encoder(pretrained=True) is a seeded random initialisation, not learned
    # weights (aacnn has none to publish): `synnav embed --backbone` says so in one line.
    random_encoder: bool = False
    # Tokens tokenize() adds to every protein (ESM's <cls> and <eos>); batch budgets count them.
    special_tokens: int = 2
    # Whether more than one CPU thread speeds the forward up. False for an encoder of many small
    # operations, where threads spend longer waking each other than computing: synnav's default
    # thread count then becomes 1 on the CPU (runtime/threads.py; --threads still overrides).
    cpu_threads_pay: bool = True

    @abc.abstractmethod
    def tokenize(self, sequences: Sequence[str]) -> TokenBatch:
        """Tokenize proteins (already validated, upper-case, at most ``max_length`` residues)."""

    @abc.abstractmethod
    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        """Build the encoder.

        With ``pretrained`` the published weights are loaded (downloaded into the synnav cache
        when missing, unless ``offline``); without, the same architecture is randomly
        initialised, to receive a state dict from a trained synnav model directory.
        """

    def build_inference_encoder(self, device: torch.device, *, offline: bool = False) -> nn.Module:
        """The pretrained encoder for inference only (no gradients) on ``device``: what
        ``synnav embed --backbone`` runs. The default is :meth:`build_encoder`'s; override it
        where a lighter build computes the same numbers (ESM2 on CPU skips transformers)."""
        return self.build_encoder(pretrained=True, offline=offline)

    def implausibility(self, pooled: np.ndarray) -> np.ndarray | None:
        """A score per protein, from its pooled embedding ``[proteins, embedding_dim]``, that
        grows on sequences unlike real proteins (shuffled or random letters), for the ``domain``
        column; None (the default) when the encoder has no such score."""
        return None

    def weights_cached(self) -> bool | None:
        """Whether pretrained weights are in the local cache; None when none are needed."""
        return None if self.weights_repo is None else False

    def fetch_weights(self, *, offline: bool = False) -> Path | tuple[Path, str] | None:
        """Download the pretrained weights into the synnav cache now (``synnav cache fetch``).

        The default builds the encoder with its pretrained weights, which downloads them;
        override it to fetch without building. Returns what the override finds useful (the ESM
        backbones return the local files), None by default.
        """
        if self.weights_repo is not None:
            self.build_encoder(pretrained=True, offline=offline)
        return None

    def tokens(self, residues: int) -> int:
        """Tokens a protein of ``residues`` residues takes once tokenized."""
        return residues + self.special_tokens

    def encoder_shape(self) -> EncoderShape:
        """Sizes for the memory model. The default takes a 12-layer transformer of
        ``embedding_dim`` with a 4x FFN, which errs on the large side for small models (the
        out-of-memory backoff corrects an estimate that is too large); override it with the
        real architecture."""
        return EncoderShape(self.embedding_dim, 12, 4 * self.embedding_dim)

    def set_gradient_checkpointing(self, encoder: nn.Module, on: bool) -> bool:
        """Recompute activations in the backward pass (or stop); False when the encoder cannot.

        The default handles an encoder with a boolean ``gradient_checkpointing`` attribute and
        transformers models (bare, or wrapped as ``encoder.esm``); anything else cannot.
        """
        if hasattr(encoder, "gradient_checkpointing") and not callable(
            encoder.gradient_checkpointing
        ):
            encoder.gradient_checkpointing = on
            return True
        inner = getattr(encoder, "esm", encoder)
        if not getattr(inner, "supports_gradient_checkpointing", False):
            return False
        if on != inner.is_gradient_checkpointing:
            if on:
                inner.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                inner.gradient_checkpointing_disable()
        return True

    def input_embedding(self, encoder: nn.Module) -> nn.Embedding:
        """The encoder's token embedding, whose output per-residue attributions are taken against.

        ``synnav predict --explain`` hooks this module's output. The default returns the first
        ``nn.Embedding`` in ``encoder.modules()``; override it when that is not the token
        embedding (for example when a position embedding is registered first).
        """
        for module in encoder.modules():
            if isinstance(module, nn.Embedding):
                return module
        raise UserError(f"backbone {self.id} has no nn.Embedding; it cannot explain predictions")

    def baseline_token_id(self) -> int | None:
        """The token whose embedding stands for "no residue" in attributions.

        None (the default) uses the padding token. Masked language models may return their
        mask token instead.
        """
        return None

    def fingerprint(self) -> str:
        """Identifies the weights an embedding was computed with (embedding-cache key)."""
        return self.id


@contextmanager
def no_weight_init() -> Iterator[None]:
    """``torch.nn.init`` does nothing inside: for modules built on the meta device only to
    receive a checkpoint's tensors. Initialising a meta tensor still runs torch's reference
    implementation, and its first use imports torch._dynamo: 1-2 s of every run's start on an
    idle CPU (more on a busy one), for values never computed."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


class BackboneUnavailable(UserError):
    """Raised by a backbone that is registered but cannot be built here."""
