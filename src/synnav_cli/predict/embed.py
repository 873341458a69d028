"""``synnav embed``: per-protein embeddings of a FASTA, from a backbone's pretrained encoder or
from the fine-tuned encoder of a trained model, written as one ``.npz`` file in input order.

The file holds ``ids`` (the record identifiers), ``lengths`` (residues per protein, before any
cut to the model's maximum), ``embeddings`` ``[proteins, dim]`` and, with ``per_residue``,
``residue_embeddings`` ``[all residues, dim]`` with ``offsets`` ``[proteins + 1]``: protein ``i``
is ``residue_embeddings[offsets[i]:offsets[i + 1]]``. Plain arrays only, so ``numpy.load`` needs
no ``allow_pickle``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synnav_cli import console
from synnav_cli.data.fasta import check_input, read_fasta
from synnav_cli.errors import UserError
from synnav_cli.files import check_output_file, input_name, readable_twice, replace_atomically
from synnav_cli.plugins import get_backbone
from synnav_cli.predict.run import validate_input
from synnav_cli.runtime import distributed
from synnav_cli.scoring.embed import embed_sequences
from synnav_cli.scoring.load import cast_encoder, load_for_scoring, scoring_runtime

FORMATS = (".npz",)


def run_embedding(
    fasta: str,
    out: Path,
    *,
    backbone_name: str | None = None,
    model_name: str | None = None,
    per_residue: bool = False,
    float16: bool = False,
    max_tokens: int | None = None,
    device: str = "auto",
    offline: bool = False,
    precision: str = "auto",
) -> int:
    """Embed every record of ``fasta`` (path or ``-``) into ``out``; returns the count.

    Arguments:
        fasta: FASTA path, or ``-`` for standard input.
        out: the ``.npz`` file to write (atomically).
        backbone_name: use this backbone's pretrained encoder.
        model_name: use this trained model's encoder (fine-tuned, or its backbone's when frozen).
        per_residue: also write every residue's vector.
        float16: store the vectors as float16 (half the size).
        max_tokens: padded tokens per batch; None derives it from the backbone and the device.
        device: auto, cpu, cuda, cuda:N or mps.
        offline: never download weights.
        precision: auto, fp32, bf16 or fp16 (see ``hardware.scoring_precision``); the one used
            is stored in the file as ``precision``.
    """
    out = Path(out)
    check_input(fasta)
    if out.suffix.lower() not in FORMATS:
        raise UserError(
            f"--out {out}: embeddings are written as .npz (HDF5 and Parquet are not supported yet)"
        )
    check_output_file(out, inputs=[fasta])
    if (backbone_name is None) == (model_name is None):
        raise UserError("give --backbone (its pretrained encoder) or --model (a trained model's)")
    if distributed.active():
        raise UserError("synnav embed runs in one process; start it without torchrun")
    with readable_twice(fasta) as source:
        validate_input(source, input_name(source), skip_invalid=False)
        if model_name is not None:
            loaded = load_for_scoring(
                model_name,
                device=device,
                max_tokens=max_tokens,
                offline=offline,
                precision=precision,
            )
            backbone, encoder, runtime, limit = (
                loaded.backbone,
                loaded.model.encoder,
                loaded.runtime,
                loaded.max_length,
            )
        else:
            backbone = get_backbone(backbone_name)
            limit = backbone.max_length
            runtime = scoring_runtime(backbone, device, limit, max_tokens, precision)
            encoder = backbone.build_encoder(pretrained=True, offline=offline).to(runtime.device)
            cast_encoder(encoder, runtime)
        records = list(read_fasta(source))
    cut = sum(len(r.sequence) > limit for r in records)
    if cut:
        console.info(
            f"{cut} proteins longer than {limit} residues are embedded over their first {limit}."
        )
    found = embed_sequences(
        encoder, backbone, [r.sequence[:limit] for r in records], runtime, per_residue=per_residue
    )
    dtype = np.float16 if float16 else np.float32
    arrays = {
        "ids": np.array([r.id for r in records], dtype=str),
        "lengths": np.array([len(r.sequence) for r in records], dtype=np.int64),
        "embeddings": found.pooled.astype(dtype),
        "precision": np.array(runtime.precision),
    }
    if found.residues is not None:
        sizes = [len(r) for r in found.residues]
        arrays["offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays["residue_embeddings"] = (
            np.concatenate(found.residues)
            if found.residues
            else np.zeros((0, backbone.embedding_dim))
        ).astype(dtype)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    replace_atomically(out, write)
    console.info(
        f"Wrote {len(records)} embeddings ({backbone.embedding_dim} values each) to {out}."
    )
    return len(records)
