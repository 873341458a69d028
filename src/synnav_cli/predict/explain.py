"""Per-residue attributions: which residues drove each predicted label.

Integrated gradients (Sundararajan et al., 2017) on the token embeddings: the embedding of every
residue is moved in a straight line from a baseline (the embedding of the backbone's "no
residue" token, padding by default) to its real value, and the gradient of the label's
probability is averaged along that path. The attribution of a residue is that average gradient
times (embedding - baseline), summed over the embedding dimensions; the attributions of a protein
add up to roughly p(protein) - p(baseline). Both probabilities are written beside the sum
(``summary.tsv``), so that the claim can be checked and the sum read against where it starts.

It works for any backbone: the encoder's input ``nn.Embedding`` (see
``Backbone.input_embedding``) is hooked so that its output is replaced by the interpolated
embeddings; nothing else about the encoder needs to be known.
"""

from __future__ import annotations

import csv
import math
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
from synnav_cli.predict.writer import spreadsheet_text
from synnav_cli.runtime import hardware
from synnav_cli.scoring.load import LoadedModel
from synnav_cli.scoring.score import halve_budget, retryable

DEFAULT_STEPS = 32


@dataclass
class Explanation:
    id: str
    sequence: str  # the residues explained (the N-terminal part of a protein over the limit)
    labels: list[str]  # the labels explained: the predicted ones, else the most probable one
    probabilities: list[float]  # of those labels
    predicted: bool  # False when no label passed its threshold and the top label was explained
    attributions: np.ndarray  # [residues, labels]
    # p(label) at the path's start, every residue's embedding the baseline's; None: not computed
    baseline: list[float] | None = None


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


def explain_tokens(model: hardware.MemoryModel, free_bytes: int, precision: str) -> int:
    """Tokens of integration steps one pass may hold in ``free_bytes`` (0: not even one).

    A pass costs what a training step costs per token, not what scoring does: the gradient with
    respect to the input embeddings runs back through every layer, so every layer's activations
    are kept (``MemoryModel.bytes_per_token(training=True)``: 2.3 MB a token for ESM C 600M in
    bf16, 82 times scoring's 28 KB; a 500-residue protein's 32 steps need about 37 GB). No
    parameter gradients or optimiser state are made. ``free_bytes`` is read with the model
    loaded, so its fp32 weights are already counted; autocast's half-precision copies are not.
    """
    per_token = model.bytes_per_token(training=True, frozen=False, precision=precision)
    copies = model.fixed_bytes(training=False, frozen=True, precision=precision) - (
        model.fixed_bytes(training=False, frozen=True, precision="fp32")
    )
    room = free_bytes * hardware.MEMORY_FRACTION - copies
    return max(0, int(room // per_token))


def _free_bytes(device: torch.device) -> int | None:
    """Free accelerator memory on ``device``; None where nothing is known (CPU, MPS)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def pass_tokens(loaded: LoadedModel) -> int:
    """Tokens one integration pass may hold: what fits in the free accelerator memory at a
    training step's cost (:func:`explain_tokens`), never more than the scoring budget (which
    ``--max-tokens`` sets); where free memory is unknown, the scoring budget (CPU: 1,024)."""
    runtime = loaded.runtime
    free = _free_bytes(runtime.device)
    if free is None:
        return runtime.max_tokens
    model = hardware.memory_model(loaded.backbone, loaded.model.encoder)
    return min(runtime.max_tokens, explain_tokens(model, free, runtime.precision))


def attribute(
    loaded: LoadedModel, sequence: str, label_indices: list[int], *, steps: int = DEFAULT_STEPS
) -> np.ndarray:
    """Integrated-gradients attributions ``[len(sequence), len(label_indices)]``.

    Arguments:
        loaded: the model to explain.
        sequence: residues, at most ``loaded.max_length``.
        label_indices: the label columns to explain.
        steps: points on the path from baseline to input (midpoint rule); more is smoother.

    Path points run as one batch, as many a pass as :func:`pass_tokens` allows. A pass that runs
    out of memory is retried smaller (``scoring.score.halve_budget``: the halved budget holds
    for the rest of the run); a lone step that does not fit is a :class:`UserError`.
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
    gradients = torch.zeros((len(label_indices), *real.shape[1:]), device=device)
    replacement: dict[str, torch.Tensor] = {}

    def swap(module, inputs, output):
        replaced = replacement["embeddings"]
        if output.dim() == 2:
            # A packed forward (ESM C's varlen and split paths) embeds only the real tokens,
            # flattened row by row: take the same tokens, in the same order, from the path.
            replaced = replaced.flatten(0, 1)[replacement["mask"].flatten()]
        return replaced.to(output.dtype)

    def integrate(chunk: torch.Tensor) -> torch.Tensor:
        """The gradients of one pass (path points ``chunk``), summed over its points."""
        interpolated = (base + chunk[:, None, None] * difference).requires_grad_(True)
        replacement["embeddings"] = interpolated
        repeated = TokenBatch(
            batch.input_ids.repeat(len(chunk), 1),
            batch.attention_mask.repeat(len(chunk), 1),
            batch.residue_mask.repeat(len(chunk), 1),
        )
        replacement["mask"] = repeated.attention_mask.bool()
        with torch.enable_grad(), runtime.autocast():
            probabilities = torch.sigmoid(model(repeated).float())
        found = torch.zeros_like(gradients)
        for k, j in enumerate(label_indices):
            (grad,) = torch.autograd.grad(
                probabilities[:, j].sum(), interpolated, retain_graph=k + 1 < len(label_indices)
            )
            found[k] = grad.float().sum(dim=0)
        return found

    budget = pass_tokens(loaded)
    handle = embedding.register_forward_hook(swap)
    model.eval()
    try:
        done = 0
        while done < steps:
            count = max(1, min(steps - done, budget // max(tokens, 1)))
            try:
                found = integrate(alphas[done : done + count])
            except RuntimeError as error:
                # Kept without its traceback, so the failed pass's tensors are free before the
                # retry; any other error is raised.
                out_of_memory = retryable(error)
            else:
                gradients += found
                done += count
                continue
            if count == 1:
                hint = "" if hardware.half_precision(runtime.precision) else " or --precision bf16"
                raise UserError(
                    f"--explain: out of memory on one integration step of a protein of "
                    f"{len(sequence)} residues on {device}; explain it on a larger device{hint}"
                )
            halve_budget(runtime, [tokens] * count, out_of_memory)
            # Below the failed pass's own size even where the budget's floor is above it.
            budget = min(runtime.max_tokens, count * tokens // 2)
    finally:
        handle.remove()
        replacement.clear()
    scores = (gradients / steps * difference).sum(dim=-1)  # [labels, tokens]
    residues = scores[:, batch.residue_mask[0]]
    return residues.T.detach().cpu().numpy()


def baseline_probabilities(
    loaded: LoadedModel, sequence: str, label_indices: list[int]
) -> np.ndarray:
    """Each label's probability where :func:`attribute`'s path starts: the protein's own tokens
    (so masks and positions are its own) with every residue's embedding the baseline token's.
    The attributions add up to about p(protein) minus this."""
    model, runtime = loaded.model, loaded.runtime
    batch = loaded.backbone.tokenize([sequence]).to(runtime.device)
    embedding = loaded.backbone.input_embedding(model.encoder)
    baseline_ids = torch.where(
        batch.residue_mask, torch.full_like(batch.input_ids, _baseline_id(loaded)), batch.input_ids
    )
    with torch.no_grad():
        base = embedding(baseline_ids)

    def swap(module, inputs, output):
        # As in attribute: a packed forward embeds only the real tokens, flattened.
        replaced = base if output.dim() == 3 else base.flatten(0, 1)[batch.attention_mask.bool()[0]]
        return replaced.to(output.dtype)

    handle = embedding.register_forward_hook(swap)
    model.eval()
    try:
        with torch.no_grad(), runtime.autocast():
            probabilities = torch.sigmoid(model(batch).float())[0, label_indices]
    finally:
        handle.remove()
    return probabilities.cpu().numpy()


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
        start = baseline_probabilities(loaded, sequence, chosen)
        yield Explanation(
            record.id,
            sequence,
            [column_name(names[j]) for j in chosen],
            [float(probs[j]) for j in chosen],
            predicted,
            values,
            [float(p) for p in start],
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
            labels = [spreadsheet_text(label) for label in explanation.labels]
            writer.writerow(["position", "residue", *labels])
            for i, residue in enumerate(explanation.sequence):
                writer.writerow(
                    [i + 1, residue, *(f"{v:.6g}" for v in explanation.attributions[i])]
                )

    # Replaced, not opened for writing: a link planted at the name is replaced, never followed.
    replace_atomically(path, write)


SUMMARY = "summary.tsv"
SUMMARY_COLUMNS = (
    "id",
    "file",
    "label",
    "probability",
    "baseline_probability",
    "attribution_sum",
    "predicted",
)


def write_summary(rows: list[tuple[str, Explanation]], path: Path) -> None:
    """One row per protein and label explained: its probability, the baseline's (where the
    path starts), and the sum of its attributions, which comes to about their difference."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(SUMMARY_COLUMNS)
            for stem, explanation in rows:
                baseline = explanation.baseline or [math.nan] * len(explanation.labels)
                for k, label in enumerate(explanation.labels):
                    writer.writerow(
                        [
                            spreadsheet_text(explanation.id),
                            stem,
                            spreadsheet_text(label),
                            f"{explanation.probabilities[k]:.6g}",
                            f"{baseline[k]:.6g}",
                            f"{explanation.attributions[:, k].sum():.6g}",
                            "yes" if explanation.predicted else "no",
                        ]
                    )

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
        if explanation.baseline is not None:
            note += f"; baseline p = {explanation.baseline[k]:.3f}, sum {values.sum():+.3f}"
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
    taken = {Path(SUMMARY).stem}  # a record named "summary" gets summary-2.tsv
    written, explained = [], []
    progress = console.Progress(None, "explain")
    for explanation in explain_records(loaded, read_fasta(fasta), steps=steps):
        stem = file_stem(explanation.id, taken)
        write_tsv(explanation, out_dir / f"{stem}.tsv")
        write_track(plt, explanation, out_dir / f"{stem}.png")
        written += [out_dir / f"{stem}.tsv", out_dir / f"{stem}.png"]
        explained.append((stem, explanation))
        progress.advance(1)
    progress.close()
    write_summary(explained, out_dir / SUMMARY)
    console.info(
        f"Wrote attributions for {len(explained)} proteins to {out_dir} ({SUMMARY}: each "
        "label's probability, the baseline's, and the attributions' sum)."
    )
    return [*written, out_dir / SUMMARY]
