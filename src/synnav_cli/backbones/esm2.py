"""ESM2 backbones (Meta, MIT licence), run through transformers' ``EsmModel`` with SDPA attention.

Embedding with a backbone on CPU (``synnav embed --backbone``) skips transformers altogether:
:meth:`ESM2.build_inference_encoder` fills :mod:`.esm2_inference`'s torch-only modules from the
same files, for the same packed forward.

Weights come from the ``facebook/esm2_*`` repositories through :mod:`synnav_cli.weights.hub`
(``config.json`` plus ``model.safetensors``; ``pytorch_model.bin`` only where a repository has
nothing else). The architecture of each registered size is written down here, so a randomly
initialised encoder needs no download. transformers is imported only when an encoder is built:
registration stays cheap.

``SYNNAV_TEST_TINY_BACKBONES=1`` swaps every size for a 2-layer, width-64 model of the same
architecture (see :func:`synnav_cli.weights.hub.tiny_backbones`); the weights are still looked up in
the same repository and loaded by the same code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from synnav_cli.backbones import esm2_inference, esm2_packed
from synnav_cli.backbones.base import Backbone, EncoderShape, TokenBatch
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.errors import UserError
from synnav_cli.hookspecs import hookimpl
from synnav_cli.weights import hub, integrity

if TYPE_CHECKING:
    from transformers import EsmConfig, EsmModel

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"

# The published checkpoints hold the whole masked-LM model. Two kinds of keys in them are not the
# encoder's and are dropped on purpose: the language-model head (``lm_head.*``) and each layer's
# rotary ``inv_freq`` (a buffer the model computes itself). Any other key that does not load, and
# any encoder weight the file lacks, is an error.
IGNORED_CHECKPOINT_KEYS = re.compile(r"^lm_head\.|\.rotary_embeddings\.inv_freq$")
# The inference-only encoder also leaves out EsmModel's contact-prediction head, which the last
# hidden state never passes through.
INFERENCE_IGNORED_KEYS = re.compile(rf"{IGNORED_CHECKPOINT_KEYS.pattern}|^(esm\.)?contact_head\.")


@dataclass(frozen=True)
class ESM2Architecture:
    """The numbers that differ between ESM2 sizes; everything else is shared by all of them."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int

    def config(self) -> EsmConfig:
        """The ``EsmConfig`` the published ``config.json`` files hold, with SDPA attention."""
        from transformers import EsmConfig

        return EsmConfig(
            vocab_size=33,
            mask_token_id=32,
            pad_token_id=1,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            # 1022 residues + <cls> + <eos>, plus the 2 slots ESM-1b's learned positions kept.
            max_position_embeddings=1026,
            layer_norm_eps=1e-5,
            position_embedding_type="rotary",
            token_dropout=True,
            emb_layer_norm_before=False,
            attn_implementation="sdpa",
        )


ESM2_TINY = ESM2Architecture(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128)  # fmt: skip


class ESM2Encoder(nn.Module):
    """``forward(input_ids, attention_mask)`` -> last layer's hidden states ``[batch, length, d]``.

    The transformers model sits under ``esm`` so that parameter names read like the hub
    checkpoints' (``esm.encoder.layer.0...``).

    Without gradients on CPU (prediction, embedding, evaluation) the forward is
    :func:`synnav_cli.backbones.esm2_packed.packed_forward` over the same weights: the same
    numbers (within 1e-5), faster (docs/benchmarks.md, "ESM2 forward on CPU"). Training,
    attributions (which need gradients) and other devices run ``EsmModel`` itself, with its
    gradient checkpointing. ``packed = False`` forces ``EsmModel`` everywhere.
    """

    def __init__(self, model: EsmModel) -> None:
        super().__init__()
        self.esm = model
        self.packed = esm2_packed.supports(model)
        # EsmModel always builds a contact-prediction head that the last hidden state never
        # passes through: it gets no gradient, which DistributedDataParallel refuses at the
        # second step. It is not trained here, so it is frozen.
        contact_head = getattr(model, "contact_head", None)
        if contact_head is not None:
            contact_head.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.packed and input_ids.device.type == "cpu" and not torch.is_grad_enabled():
            return esm2_packed.packed_forward(self.esm, input_ids, attention_mask)
        return self.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ESM2(Backbone):
    """One ESM2 size. ``architecture`` is the published one; tests may pass a tiny one."""

    license = "MIT"

    def __init__(
        self, id: str, architecture: ESM2Architecture, weights_repo: str, description: str
    ) -> None:
        self.id = id
        self._architecture = architecture
        self.max_length = 1022  # ESM2 was trained on crops of 1024 tokens, <cls> and <eos> included
        self.weights_repo = weights_repo
        self.description = description

    @property
    def architecture(self) -> ESM2Architecture:
        return ESM2_TINY if hub.tiny_backbones() else self._architecture

    @property
    def embedding_dim(self) -> int:  # type: ignore[override]
        return self.architecture.hidden_size

    def encoder_shape(self) -> EncoderShape:
        shape = self.architecture
        return EncoderShape(shape.hidden_size, shape.num_hidden_layers, shape.intermediate_size)

    def tokenize(self, sequences: Sequence[str]) -> TokenBatch:
        # ESM2's vocabulary has <null_1> where ESM C has "|" (id 31); no protein uses either.
        return ESM_VOCABULARY.batch(sequences)

    def fingerprint(self) -> str:
        return f"{self.id}+tiny" if hub.tiny_backbones() else self.id

    def weights_cached(self) -> bool:
        repo = self.weights_repo
        return hub.is_cached(repo, CONFIG_FILE) and (
            hub.is_cached(repo, SAFETENSORS_FILE) or hub.is_cached(repo, PYTORCH_FILE)
        )

    def fetch_weights(self, *, offline: bool = False) -> tuple[Path, str]:
        """Download (unless cached) and verify the weights; return (snapshot dir, weights file).

        safetensors is preferred: it loads without unpickling. ``pytorch_model.bin`` is used
        only when it is all the cache holds or all the repository has.
        """
        repo = self.weights_repo
        weights = SAFETENSORS_FILE
        if not hub.is_cached(repo, SAFETENSORS_FILE) and hub.is_cached(repo, PYTORCH_FILE):
            weights = PYTORCH_FILE
        options = dict(licence=self.license, backbone=self.id, offline=offline)
        try:
            return hub.fetch(repo, [CONFIG_FILE, weights], **options), weights
        except hub.RemoteFileMissing:
            if weights != SAFETENSORS_FILE:
                raise
        return hub.fetch(repo, [CONFIG_FILE, PYTORCH_FILE], **options), PYTORCH_FILE

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        """Build the encoder (in eval mode); with ``pretrained``, load the published weights."""
        from transformers import EsmModel

        if not pretrained:
            return ESM2Encoder(EsmModel(self.architecture.config(), add_pooling_layer=False)).eval()
        snapshot, weights = self.fetch_weights(offline=offline)
        self._check_config(snapshot / CONFIG_FILE)
        try:
            with _quiet_transformers():
                model, info = EsmModel.from_pretrained(
                    snapshot,
                    add_pooling_layer=False,
                    attn_implementation="sdpa",
                    dtype=torch.float32,
                    local_files_only=True,
                    output_loading_info=True,
                )
        except Exception as error:  # noqa: BLE001 - any failure here means unusable files
            raise integrity.damaged_file_error(
                self.weights_repo, weights, snapshot / weights, error
            ) from error
        # A weight the file lacks would stay random; one the encoder lacks means another model.
        problems = [
            *(f"missing {key}" for key in sorted(info.get("missing_keys", ()))),
            *(f"mis-shaped {key}" for key in info.get("mismatched_keys", ())),
            *(
                f"unexpected {key}"
                for key in sorted(info.get("unexpected_keys", ()))
                if not IGNORED_CHECKPOINT_KEYS.search(key)
            ),
        ]
        if problems:
            raise UserError(
                f"{weights} of {self.weights_repo} does not fit backbone {self.id}: "
                f"{len(problems)} weights missing, unexpected or mis-shaped (first: {problems[0]})"
            )
        return ESM2Encoder(model).eval()

    def build_inference_encoder(self, device: torch.device, *, offline: bool = False) -> nn.Module:
        """On CPU, the pretrained encoder without transformers (:mod:`.esm2_inference`): the
        same weights and the same packed forward as :meth:`build_encoder`'s on CPU, seconds
        sooner. Elsewhere, :meth:`build_encoder`'s ``EsmModel``."""
        if torch.device(device).type != "cpu":
            return self.build_encoder(pretrained=True, offline=offline)
        snapshot, weights = self.fetch_weights(offline=offline)
        self._check_config(snapshot / CONFIG_FILE)
        path = snapshot / weights
        if weights == SAFETENSORS_FILE:
            try:
                checkpoint = esm2_inference.read_checkpoint(path)
            except Exception as error:  # safetensors raises several types
                raise integrity.damaged_file_error(
                    self.weights_repo, weights, path, error
                ) from error
        else:
            checkpoint = integrity.load_torch_state_dict(
                path, repo_id=self.weights_repo, filename=weights
            )
        shape = self.architecture
        return esm2_inference.build(
            shape.hidden_size,
            shape.num_hidden_layers,
            shape.num_attention_heads,
            shape.intermediate_size,
            checkpoint,
            ignored=INFERENCE_IGNORED_KEYS,
            misfit=f"{weights} of {self.weights_repo} does not fit backbone {self.id}",
        )

    def _check_config(self, path: Path) -> None:
        """Refuse a cached ``config.json`` that describes another model than this backbone's."""
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise integrity.damaged_file_error(
                self.weights_repo, CONFIG_FILE, path, error
            ) from error
        expected: dict[str, Any] = {
            "hidden_size": self.architecture.hidden_size,
            "num_hidden_layers": self.architecture.num_hidden_layers,
            "num_attention_heads": self.architecture.num_attention_heads,
            "intermediate_size": self.architecture.intermediate_size,
            "vocab_size": 33,
            "position_embedding_type": "rotary",
        }
        wrong = {k: found.get(k) for k, v in expected.items() if found.get(k) != v}
        if wrong:
            hint = f" ({hub.TINY_ENV} is set)" if hub.tiny_backbones() else ""
            differences = ", ".join(
                f"{k}={v!r} (expected {expected[k]!r})" for k, v in wrong.items()
            )
            raise UserError(
                f"the cached config.json of {self.weights_repo} does not describe backbone "
                f"{self.id}{hint}: {differences}"
            )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report and per-tensor progress bar.

    The report lists the masked-LM head as unexpected, which is expected; real problems are
    checked from the loading info instead.
    """
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    progress = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if progress:
            transformers_logging.enable_progress_bar()


# (id, aliases, hub repository, architecture, description)
ESM2_SIZES = (
    ("esm2_8m", ("esm2-8m", "esm2_t6_8m_ur50d"), "facebook/esm2_t6_8M_UR50D",
     ESM2Architecture(320, 6, 20, 1280), "ESM2 8M, 6 layers (baseline)"),
    ("esm2_35m", ("esm2-35m", "esm2_t12_35m_ur50d"), "facebook/esm2_t12_35M_UR50D",
     ESM2Architecture(480, 12, 20, 1920), "ESM2 35M, 12 layers"),
    ("esm2_150m", ("esm2-150m", "esm2_t30_150m_ur50d"), "facebook/esm2_t30_150M_UR50D",
     ESM2Architecture(640, 30, 20, 2560), "ESM2 150M, 30 layers"),
    ("esm2_650m", ("esm2-650m", "esm2_t33_650m_ur50d"), "facebook/esm2_t33_650M_UR50D",
     ESM2Architecture(1280, 33, 20, 5120), "ESM2 650M, 33 layers"),
)  # fmt: skip


@hookimpl
def register_backbones(register):
    for backbone_id, aliases, repo, architecture, description in ESM2_SIZES:
        register(ESM2(backbone_id, architecture, repo, description), aliases=aliases)
