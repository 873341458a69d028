"""Per-residue attributions: which residues drove each predicted label.

Integrated gradients (Sundararajan et al., 2017) on the token embeddings: the embedding of every
residue is moved in a straight line from a baseline (the embedding of the backbone's "no
residue" token, padding by default) to its real value, and the gradient of the label's
probability is averaged along that path. The attribution of a residue is that average gradient
times (embedding - baseline), summed over the embedding dimensions; the attributions of a protein
add up to roughly p(protein) - p(baseline).

It works for any backbone: the encoder's input ``nn.Embedding`` (see
``Backbone.input_embedding``) is hooked so that its output is replaced by the interpolated
embeddings; nothing else about the encoder needs to be known.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synnav_cli import console
from synnav_cli.backbones.base import TokenBatch
from synnav_cli.data.dataset import column_name
from synnav_cli.data.fasta import FastaRecord, read_fasta
from synnav_cli.errors import UserError
from synnav_cli.files import replace_atomically
from synnav_cli.scoring.load import LoadedModel

DEFAULT_STEPS = 32


@dataclass
class Explanation:
    id: str
    sequence: str  # the residues explained (the N-terminal part of a protein over the limit)
    labels: list[str]  # the labels explained: the predicted ones, else the most probable one
    probabilities: list[float]  # of those labels
    predicted: bool  # False when no label passed its threshold and the top label was explained
    attributions: np.ndarray  # [residues, labels]


def _baseline_id(loaded: LoadedModel) -> int:
    chosen = loaded.backbone.baseline_token_id()
    if chosen is not None:
        return int(chosen)
    embedding = loaded.backbone.input_embedding(loaded.model.encoder)
    if embedding.padding_idx is not None:
        return int(embedding.padding_idx)
    # Without a declared padding index, the token a backbone pads with is found by tokenizing
    # two proteins of different lengths and reading the shorter one's padding.
    padded = loaded.backbone.tokenize(["A", "AA"])
    return int(padded.input_ids[0, ~padded.attention_mask[0]][0])


def attribute(
    loaded: LoadedModel, sequence: str, label_indices: list[int], *, steps: int = DEFAULT_STEPS
) -> np.ndarray:
    """Integrated-gradients attributions ``[len(sequence), len(label_indices)]``.

    Arguments:
        loaded: the model to explain.
        sequence: residues, at most ``loaded.max_length``.
        label_indices: the label columns to explain.
        steps: points on the path from baseline to input (midpoint rule); more is smoother.
    """
    model, runtime = loaded.model, loaded.runtime
    device = runtime.device
    batch = loaded.backbone.tokenize([sequence]).to(device)
    embedding = loaded.backbone.input_embedding(model.encoder)
    # Only residues move along the path; special tokens keep their embeddings throughout.
    baseline_ids = torch.where(
        batch.residue_mask, torch.full_like(batch.input_ids, _baseline_id(loaded)), batch.input_ids
    )
    with torch.no_grad():
        real = embedding(batch.input_ids).float()
        base = embedding(baseline_ids).float()
    difference = real - base  # [1, tokens, dim]; zero outside the residues
    alphas = (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps
    tokens = batch.input_ids.shape[1]
    # Path points are scored as one batch, as many at a time as the token budget allows.
    per_pass = max(1, min(steps, runtime.max_tokens // max(tokens, 1)))
    gradients = torch.zeros((len(label_indices), *real.shape[1:]), device=device)
    replacement: dict[str, torch.Tensor] = {}

    def swap(module, inputs, output):
        return replacement["embeddings"].to(output.dtype)

    handle = embedding.register_forward_hook(swap)
    model.eval()
    try:
        for start in range(0, steps, per_pass):
            chunk = alphas[start : start + per_pass]
            interpolated = (base + chunk[:, None, None] * difference).requires_grad_(True)
            replacement["embeddings"] = interpolated
            repeated = TokenBatch(
                batch.input_ids.repeat(len(chunk), 1),
                batch.attention_mask.repeat(len(chunk), 1),
                batch.residue_mask.repeat(len(chunk), 1),
            )
            with torch.enable_grad(), runtime.autocast():
                probabilities = torch.sigmoid(model(repeated).float())
            for k, j in enumerate(label_indices):
                (grad,) = torch.autograd.grad(
                    probabilities[:, j].sum(), interpolated, retain_graph=k + 1 < len(label_indices)
                )
                gradients[k] += grad.float().sum(dim=0)
    finally:
        handle.remove()
        replacement.clear()
    scores = (gradients / steps * difference).sum(dim=-1)  # [labels, tokens]
    residues = scores[:, batch.residue_mask[0]]
    return residues.T.detach().cpu().numpy()


def explain_records(
    loaded: LoadedModel, records: Iterable[FastaRecord], *, steps: int = DEFAULT_STEPS
) -> Iterable[Explanation]:
    """Explain the predicted labels of each record (the N-terminal ``max_length`` residues)."""
    from synnav_cli.scoring.score import score_sequences

    names = loaded.info.label_names
    for record in records:
        sequence = record.sequence[: loaded.max_length]
        if len(sequence) < len(record.sequence):
            console.warn(f"{record.id}: explaining its first {loaded.max_length} residues only")
        probs = score_sequences(loaded.model, loaded.backbone, [sequence], loaded.runtime)[0]
        chosen = [j for j, (p, t) in enumerate(zip(probs, loaded.thresholds)) if p >= t]
        predicted = bool(chosen)
        if not chosen:
            chosen = [int(np.argmax(probs))]
        values = attribute(loaded, sequence, chosen, steps=steps)
        yield Explanation(
            record.id,
            sequence,
            [column_name(names[j]) for j in chosen],
            [float(probs[j]) for j in chosen],
            predicted,
            values,
        )


def file_stem(record_id: str, taken: set[str]) -> str:
    """A safe, unique file name for a record id (``sp|P1|X`` -> ``sp_P1_X``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._") or "record"
    unique, n = stem, 2
    while unique.lower() in taken:
        unique, n = f"{stem}-{n}", n + 1
    taken.add(unique.lower())
    return unique


def write_tsv(explanation: Explanation, path: Path) -> None:
    """position (1-based), residue, one attribution column per explained label."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["position", "residue", *explanation.labels])
            for i, residue in enumerate(explanation.sequence):
                writer.writerow(
                    [i + 1, residue, *(f"{v:.6g}" for v in explanation.attributions[i])]
                )

    # Replaced, not opened for writing: a link planted at the name is replaced, never followed.
    replace_atomically(path, write)


def write_track(plt, explanation: Explanation, path: Path) -> None:
    """One panel per label: attribution along the sequence, positive up, negative down."""
    count = len(explanation.labels)
    width = max(6.0, min(18.0, len(explanation.sequence) / 40))
    figure, panels = plt.subplots(
        count, 1, figsize=(width, 1.8 * count + 0.6), sharex=True, squeeze=False
    )
    positions = np.arange(1, len(explanation.sequence) + 1)
    for k, (label, probability) in enumerate(zip(explanation.labels, explanation.probabilities)):
        axes = panels[k][0]
        values = explanation.attributions[:, k]
        axes.bar(positions, np.clip(values, 0, None), width=1.0, color="#c0392b")
        axes.bar(positions, np.clip(values, None, 0), width=1.0, color="#2e86c1")
        axes.axhline(0, color="black", linewidth=0.5)
        note = "" if explanation.predicted else ", not predicted"
        axes.set_title(f"{label} (p = {probability:.3f}{note})", fontsize=9, loc="left")
        axes.set_ylabel("attribution", fontsize=8)
    panels[-1][0].set_xlabel("residue position")
    panels[-1][0].set_xlim(0.5, len(explanation.sequence) + 0.5)
    figure.suptitle(explanation.id, fontsize=10)
    figure.tight_layout()
    replace_atomically(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def write_explanations(
    loaded: LoadedModel, fasta: str | Path, out_dir: Path, *, steps: int = DEFAULT_STEPS
) -> list[Path]:
    """Write ``<id>.tsv`` and ``<id>.png`` per record of ``fasta`` into ``out_dir``.

    Arguments:
        loaded: the model to explain (see ``session.load_for_scoring``).
        fasta: FASTA path (read once more here; the caller spools standard input).
        out_dir: created when missing.
        steps: integration steps per protein.

    Returns the files written.
    """
    from synnav_cli.plots import pyplot

    if steps < 1:
        raise UserError("--explain-steps must be at least 1")
    plt = pyplot()  # fail before any work when matplotlib is missing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = []
    progress = console.Progress(None, "explain")
    for explanation in explain_records(loaded, read_fasta(fasta), steps=steps):
        stem = file_stem(explanation.id, taken)
        write_tsv(explanation, out_dir / f"{stem}.tsv")
        write_track(plt, explanation, out_dir / f"{stem}.png")
        written += [out_dir / f"{stem}.tsv", out_dir / f"{stem}.png"]
        progress.advance(1)
    progress.close()
    console.info(f"Wrote attributions for {len(written) // 2} proteins to {out_dir}.")
    return written
