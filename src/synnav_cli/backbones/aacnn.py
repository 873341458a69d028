"""A small dilated residual CNN over amino acids: a backbone that needs no pretrained weights.

It exists so that synnav works straight after installation, on a CPU, with nothing to download:
the bundled model is this network trained from scratch on the synnav dataset. It is far weaker
than a fine-tuned protein language model, but quick (a protein of 500 residues costs a few
milliseconds on one core) and small (about 220,000 parameters, 0.9 MB of weights).

Design, and why:

* Learned amino-acid embeddings plus two fixed physico-chemical channels (Kyte-Doolittle
  hydrophobicity and charge). The fixed channels give a useful start on small data: signal
  peptides, transmembrane segments and mitochondrial presequences are hydrophobic or charged
  stretches.
* Learned position embeddings for the first residues and for the last ones. Targeting signals
  sit at the ends (signal peptides and presequences at the N-terminus; KDEL-like ER retention
  and PDZ-binding motifs of synaptic proteins at the C-terminus), and a convolution alone cannot
  tell where in the protein it is.
* ConvNeXt-style residual blocks (depthwise dilated convolution, layer norm, pointwise MLP),
  cheap on a CPU; growing dilations give a receptive field of a few hundred residues.
* synnav's head averages the per-residue embeddings. An average dilutes a 30-residue signal in a
  1000-residue protein, so the encoder appends to every position a few protein-level summaries
  (a masked max over the protein, a mean over the N-terminal and over the C-terminal residues).
  Being the same at every position, they pass through the head's mean unchanged.

Padding, ``<cls>`` and ``<eos>`` are zeroed before every convolution and excluded from every
summary, so a protein gets the same embedding alone as in any padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from synnav_cli.backbones.base import Backbone, TokenBatch
from synnav_cli.backbones.esm_alphabet import ESM_TOKENS, ESM_VOCABULARY
from synnav_cli.hookspecs import hookimpl

# Kyte & Doolittle (1982) hydropathy, scaled to [-1, 1].
_HYDROPATHY = {
    "A": 1.8, "R": -4.5, "N": -3.5, "D": -3.5, "C": 2.5, "Q": -3.5, "E": -3.5, "G": -0.4,
    "H": -3.2, "I": 4.5, "L": 3.8, "K": -3.9, "M": 1.9, "F": 2.8, "P": -1.6, "S": -0.8,
    "T": -0.7, "W": -0.9, "Y": -1.3, "V": 4.2,
}  # fmt: skip
# Side-chain charge near pH 7 (histidine mostly neutral).
_CHARGE = {"K": 1.0, "R": 1.0, "H": 0.1, "D": -1.0, "E": -1.0}

N_TERMINAL = 50  # residues with their own position embedding; also the N-terminal summary window
C_TERMINAL = 20  # the same at the C-terminus
_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PRETRAINED_SEED = 20261125


def _property_table() -> torch.Tensor:
    table = torch.zeros(len(ESM_TOKENS), 2)
    for i, token in enumerate(ESM_TOKENS):
        table[i, 0] = _HYDROPATHY.get(token, 0.0) / 4.5
        table[i, 1] = _CHARGE.get(token, 0.0)
    return table


class _Block(nn.Module):
    """Depthwise dilated convolution, then a per-position MLP; pre-norm residual."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            dim,
            dim,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            groups=dim,
        )
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.down = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # Zeroing before the convolution is what keeps padding (and a neighbour's residues, in a
        # batch) from leaking into a protein's edges.
        h = self.conv((x * keep).transpose(1, 2)).transpose(1, 2)
        h = self.down(self.act(self.up(self.norm(h))))
        return x + self.dropout(h)


def _windowed_mean(values: torch.Tensor, keep: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of ``values`` ([B, L]) over every full ``window`` of kept residues; -inf elsewhere."""
    kernel = torch.ones(1, 1, window, dtype=values.dtype, device=values.device)
    # Zero padding (not kept) up to one window, so that a protein shorter than it has no window.
    extra = max(0, window - values.shape[1])
    values = torch.nn.functional.pad(values, (0, extra))
    keep = torch.nn.functional.pad(keep, (0, extra))
    sums = torch.nn.functional.conv1d((values * keep).unsqueeze(1), kernel).squeeze(1)
    counts = torch.nn.functional.conv1d(keep.unsqueeze(1), kernel).squeeze(1)
    return (sums / window).masked_fill(counts < window, float("-inf"))


def residue_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which positions are residues (not padding, ``<cls>`` or ``<eos>``), and each one's
    number from the N-terminus and from the C-terminus (0 at the terminal residue)."""
    residues = (
        attention_mask.bool()
        & (input_ids != ESM_VOCABULARY.cls_id)
        & (input_ids != ESM_VOCABULARY.eos_id)
    )
    index = residues.long().cumsum(dim=1) - 1
    from_end = residues.sum(dim=1, keepdim=True) - 1 - index
    return residues, index, from_end


class GlobalFeatures(nn.Module):
    """Fixed protein-level descriptors that a convolution plus averaging cannot see.

    * Length (log scale). Averaging over residues discards it, yet it separates compartments
      and synapse proteins well: receptors and synaptic scaffolds are long, mitochondrial
      proteins short. On the dataset's homology-aware split a logistic regression gains 0.05 to
      0.09 test ROC-AUC on the synapse labels from it alone.
    * Amino-acid composition of the whole protein, its first 50 and its last 20 residues.
    * Hydrophobic segments: the most hydrophobic 19-residue window (Kyte-Doolittle), the share
      of windows above 1.6 (a transmembrane helix), whether the first 60 residues hold one
      (a signal peptide or signal anchor), and how many separate segments there are.
    """

    size = 3 * 20 + 1 + 4
    WINDOW, HYDROPHOBIC, SIGNAL_REGION = 19, 1.6 / 4.5, 60

    def __init__(self) -> None:
        super().__init__()
        # Not a buffer: module.to(torch.bfloat16) would round the hydropathy values.
        self.hydropathy = _property_table()[:, 0].double()
        amino = torch.zeros(len(ESM_TOKENS), 20)
        for i, token in enumerate(ESM_TOKENS):
            if token in _AMINO_ACIDS:
                amino[i, _AMINO_ACIDS.index(token)] = 1.0
        self.register_buffer("amino", amino, persistent=False)

    def _composition(self, one_hot: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        counts = (one_hot * weight.unsqueeze(-1)).sum(dim=1)
        return counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, GlobalFeatures.size]`` descriptors, in fp32."""
        residues, index, from_end = residue_positions(input_ids, attention_mask)
        # Always fp32, even when the model runs on bf16 weights: bf16 counts residues exactly
        # only up to 256, and log length and compositions need more than its 3 digits.
        hydropathy = self.hydropathy.to(input_ids.device).float()[input_ids]
        keep = residues.float()
        one_hot = self.amino.float()[input_ids]
        lengths = keep.sum(dim=1)
        parts = [
            self._composition(one_hot, keep),
            self._composition(one_hot, keep * (index < N_TERMINAL)),
            self._composition(one_hot, keep * (from_end < C_TERMINAL)),
        ]
        windows = _windowed_mean(hydropathy, keep, self.WINDOW)
        full = torch.isfinite(windows)
        above = (windows > self.HYDROPHOBIC) & full
        peak = windows.amax(dim=1)
        # A protein shorter than one window: its mean hydropathy stands in for the peak.
        mean = (hydropathy * keep).sum(dim=1) / lengths.clamp_min(1)
        peak = torch.where(torch.isfinite(peak), peak, mean)
        share = above.sum(dim=1) / full.sum(dim=1).clamp_min(1)
        signal = above[:, : self.SIGNAL_REGION - self.WINDOW + 1].any(dim=1)
        starts = (above[:, 1:] & ~above[:, :-1]).sum(dim=1) + above[:, :1].sum(dim=1)
        shape = torch.stack(
            [
                torch.log(lengths.clamp_min(1.0)) - 6.0,
                peak,
                share,
                signal.to(keep.dtype),
                starts.to(keep.dtype) / 4.0,
            ],
            dim=1,
        )
        # Compositions are a few per cent each: scale them to about the other inputs' range.
        return torch.cat([10.0 * torch.cat(parts, dim=1), shape], dim=1)


@torch.inference_mode()
def describe_sequences(sequences: Sequence[str], limit: int, batch: int = 256) -> np.ndarray:
    """``GlobalFeatures`` of each sequence cut to ``limit`` residues, as the model sees it:
    ``[len(sequences), GlobalFeatures.size]`` float64 (for fitting models on them)."""
    describe = GlobalFeatures()
    parts = [np.zeros((0, GlobalFeatures.size))]
    for start in range(0, len(sequences), batch):
        tokens = ESM_VOCABULARY.batch([s[:limit] for s in sequences[start : start + batch]])
        parts.append(describe(tokens.input_ids, tokens.attention_mask).double().numpy())
    return np.concatenate(parts)


class AACNNEncoder(nn.Module):
    """``forward(input_ids, attention_mask)`` -> ``[batch, length, 4 * dim + global_dim + 1]``.

    Per position: the local features of the patch the residue falls in, then the protein's
    masked max, N-terminal mean and C-terminal mean of the patch features, a projection of the
    fixed global descriptors, and one implausibility score (all repeated at every position, so
    that the head's mean keeps them).

    The implausibility score, ``softplus(-gate(...))``, is read from the convolutional summaries
    and the descriptors. The bundled model is trained with shuffled decoys labelled negative for
    every label: a decoy has a real protein's composition and length, so without this score the
    network would have to stop using composition and length at all to keep decoys uncalled. With
    it, the head learns one negative weight per label on the score, the score grows on sequences
    that lack a protein's order, and composition and length stay usable for real proteins. (A
    multiplicative gate on all features did as well on dev, 0.725 against 0.724 mean ROC-AUC,
    but an additive score cannot shut the gradient off the way a closed sigmoid gate does.)
    """

    # The defaults are the bundled model's architecture (src/synnav_cli/bundled/model): a model
    # directory stores weights, not shapes, so changing them breaks loading that model.
    def __init__(
        self,
        dim: int = 96,
        residue_dim: int = 48,
        patch: int = 4,
        kernel_size: int = 7,
        dilations: Sequence[int] = (1, 2, 4, 8, 1),
        dropout: float = 0.1,
        global_dim: int = 64,
    ) -> None:
        super().__init__()
        self.dim, self.patch = dim, patch
        self.embed = nn.Embedding(
            len(ESM_VOCABULARY), residue_dim - 2, padding_idx=ESM_VOCABULARY.pad_id
        )
        self.register_buffer("properties", _property_table(), persistent=False)
        # Index N_TERMINAL (resp. C_TERMINAL) means "further in"; it is the padding row, kept at 0.
        self.n_position = nn.Embedding(N_TERMINAL + 1, residue_dim, padding_idx=N_TERMINAL)
        self.c_position = nn.Embedding(C_TERMINAL + 1, residue_dim, padding_idx=C_TERMINAL)
        # Residues are read in non-overlapping patches: the blocks then run on a quarter of the
        # positions, which is what makes CPU training affordable. Position embeddings are added
        # per residue, before patching, so the exact offset of an N-terminal motif survives.
        self.stem = nn.Conv1d(residue_dim, dim, kernel_size=patch, stride=patch)
        self.blocks = nn.ModuleList(_Block(dim, kernel_size, d, dropout) for d in dilations)
        self.norm = nn.LayerNorm(dim)
        self.global_features = GlobalFeatures()
        self.global_projection = nn.Sequential(
            nn.Linear(GlobalFeatures.size, global_dim), nn.GELU(), nn.Linear(global_dim, global_dim)
        )
        self.gate_norm = nn.LayerNorm(3 * dim + GlobalFeatures.size, elementwise_affine=False)
        self.gate = nn.Linear(3 * dim + GlobalFeatures.size, 1)
        nn.init.normal_(self.n_position.weight, std=0.1)
        nn.init.normal_(self.c_position.weight, std=0.1)
        with torch.no_grad():
            self.n_position.weight[N_TERMINAL].zero_()
            self.c_position.weight[C_TERMINAL].zero_()
            # Start at a small, constant score (softplus(-3) = 0.05): it only grows where decoys
            # teach it to.
            self.gate.weight.zero_()
            self.gate.bias.fill_(3.0)

    def _patches(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` ([B, L', C], L' a multiple of the patch) over each patch."""
        batch, length, channels = values.shape
        return values.view(batch, length // self.patch, self.patch, channels).mean(dim=2)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        descriptors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``descriptors``: ``GlobalFeatures`` of this batch when the caller has them already
        (aacnn-ensemble computes them once for all its members)."""
        length = input_ids.shape[1]
        residues, index, from_end = residue_positions(input_ids, attention_mask)
        n_index = index.clamp(0, N_TERMINAL).masked_fill(~residues, N_TERMINAL)
        c_index = from_end.clamp(0, C_TERMINAL).masked_fill(~residues, C_TERMINAL)

        x = torch.cat([self.embed(input_ids), self.properties[input_ids]], dim=-1)
        x = x + self.n_position(n_index) + self.c_position(c_index)
        keep = residues.unsqueeze(-1).to(x.dtype)
        if descriptors is None:
            descriptors = self.global_features(input_ids, attention_mask)
        globals_ = descriptors.to(x.dtype)
        # Pad to whole patches with zeros; a protein's patches then do not depend on the batch.
        extra = -length % self.patch
        n_weight = keep * (index < N_TERMINAL).unsqueeze(-1)
        c_weight = keep * (from_end < C_TERMINAL).unsqueeze(-1)
        per_residue = torch.nn.functional.pad(
            torch.cat([x * keep, keep, n_weight, c_weight], dim=-1), (0, 0, 0, extra)
        )
        x, keep, n_weight, c_weight = per_residue.split([x.shape[-1], 1, 1, 1], dim=-1)
        x = self.stem(x.transpose(1, 2)).transpose(1, 2)
        patch_keep = (self._patches(keep) > 0).to(x.dtype)
        for block in self.blocks:
            x = block(x, patch_keep)
        x = self.norm(x) * patch_keep

        present = patch_keep.bool()
        peak = x.masked_fill(~present, float("-inf")).amax(dim=1)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        n_weight, c_weight = self._patches(n_weight), self._patches(c_weight)
        n_mean = (x * n_weight).sum(dim=1) / n_weight.sum(dim=1).clamp_min(1e-6)
        c_mean = (x * c_weight).sum(dim=1) / c_weight.sum(dim=1).clamp_min(1e-6)
        summaries = torch.cat([peak, n_mean, c_mean], dim=-1)
        plausibility = self.gate(self.gate_norm(torch.cat([summaries, globals_], dim=-1)))
        implausible = torch.nn.functional.softplus(-plausibility)
        protein = torch.cat([summaries, self.global_projection(globals_), implausible], dim=-1)
        local = x.repeat_interleave(self.patch, dim=1)[:, :length]
        protein = protein.unsqueeze(1).expand(-1, length, -1)
        return torch.cat([local, protein], dim=-1)


class AACNNBackbone(Backbone):
    id = "aacnn"
    embedding_dim = 4 * 96 + 64 + 1
    max_length = 2000
    license = "MIT"
    description = "small dilated residual CNN over amino acids, trained from scratch (no download)"
    weights_repo = None
    random_encoder = True  # the "pretrained" encoder is a fixed-seed initialisation
    # Thousands of small convolutions a batch: the bundled model (three of these) took 1.3-1.6x
    # longer at 2 threads than at 1 on an idle 2-core CPU (docs/benchmarks.md, threads).
    cpu_threads_pay = False

    def tokenize(self, sequences: Sequence[str]) -> TokenBatch:
        return ESM_VOCABULARY.batch(sequences)

    def implausibility(self, pooled: np.ndarray) -> np.ndarray:
        # The encoder's last feature, the same at every position, so its mean is the score.
        return np.asarray(pooled)[:, self.embedding_dim - 1]

    def fingerprint(self) -> str:
        # The architecture's version: a model trained on an earlier aacnn (without the global
        # descriptors) is refused by name instead of failing on mismatched tensors.
        return "aacnn-v2"

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        # There are no published weights. The "pretrained" encoder is a random initialisation from
        # a fixed seed, so that a model trained with --freeze (which stores only the head) gets
        # the same encoder back when it is loaded; a fine-tuned model stores the whole encoder.
        if pretrained:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PRETRAINED_SEED)
                return self.new_encoder()
        return self.new_encoder()

    def new_encoder(self) -> nn.Module:
        return AACNNEncoder()


@hookimpl
def register_backbones(register):
    register(AACNNBackbone(), aliases=("aa-cnn",))
