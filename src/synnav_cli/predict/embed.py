"""``synnav embed``: per-protein embeddings of a FASTA, from a backbone's pretrained encoder or
from the fine-tuned encoder of a trained model, written in input order to an ``.npz``, ``.h5`` or
``.parquet`` file (layouts: :mod:`.embed_files`, read back by :mod:`.embed_read`).

Embedding runs as prediction does: records are read in chunks and batched by length under the
token budget; ``--shard I/N`` embeds records I-1, I-1+N, ... (joined by ``synnav merge``); under
torchrun rank 0 reads, every rank embeds its share of each chunk and rank 0 writes. Finished
chunks are kept in ``FILE.partial/`` (:mod:`.embed_store`), so an interrupted run resumes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synnav_cli import __version__, console
from synnav_cli.backbones.base import Backbone
from synnav_cli.data.fasta import FastaRecord, check_input, read_fasta
from synnav_cli.errors import UserError
from synnav_cli.files import (
    atomic_path,
    check_output_file,
    exclusive_lock,
    input_name,
    readable_twice,
    terminated_as_interrupt,
)
from synnav_cli.plugins import get_backbone
from synnav_cli.predict.embed_files import EmbeddingChunk, format_of, require, write_embeddings
from synnav_cli.predict.embed_store import EmbeddingStore
from synnav_cli.predict.resumable import ResumableOutput, input_digest
from synnav_cli.predict.run import model_identity, validate_input
from synnav_cli.runtime import distributed, threads
from synnav_cli.scoring.embed import embed_sequences
from synnav_cli.scoring.load import (
    LoadedModel,
    cast_encoder,
    load_for_scoring,
    scoring_runtime,
)
from synnav_cli.scoring.score import Runtime

# Proteins a chunk (and a resume step) holds, as in predict. Residue vectors are some hundred
# times larger than the pooled ones, so with them a chunk holds fewer proteins.
CHUNK_RECORDS = 2048
CHUNK_RECORDS_PER_RESIDUE = 256


@dataclass
class Encoder:
    backbone: Backbone
    encoder: torch.nn.Module
    runtime: Runtime
    limit: int  # residues embedded per protein
    identity: dict  # what made the vectors, for the file's metadata and resume checks


def load_encoder(
    backbone_name: str | None,
    model_name: str | None,
    device: str,
    max_tokens,
    offline: bool,
    precision: str = "auto",
) -> Encoder:
    """A backbone's pretrained encoder, or a trained model's (fine-tuned, or its frozen one)."""
    if model_name is not None:
        loaded = load_for_scoring(
            model_name, device=device, max_tokens=max_tokens, offline=offline, precision=precision
        )
        return model_encoder(loaded, model_name)
    backbone = get_backbone(backbone_name)
    if backbone.random_encoder and distributed.is_main():
        console.warn(
            f"backbone {backbone.id} has no pretrained weights: these embeddings come from a "
            "random initialisation and carry nothing learned; --model NAME embeds with a "
            "trained model's encoder"
        )
    runtime = scoring_runtime(backbone, device, backbone.max_length, max_tokens, precision)
    threads.fit_to_backbone(backbone, runtime.device)
    encoder = backbone.build_inference_encoder(runtime.device, offline=offline).to(runtime.device)
    cast_encoder(encoder, runtime)
    identity = {"backbone": backbone.id, "weights": backbone.fingerprint(), "model": None}
    return Encoder(backbone, encoder, runtime, backbone.max_length, identity)


def model_encoder(loaded: LoadedModel, model_name: str) -> Encoder:
    """The encoder of a loaded model (fine-tuned, or its frozen one), as ``synnav embed
    --model`` and the Python API's ``embed`` use it."""
    backbone = loaded.backbone
    identity = {"model": model_name, **model_identity(loaded.info)}
    return Encoder(
        backbone,
        loaded.model.encoder,
        loaded.runtime,
        loaded.max_length,
        {"backbone": backbone.id, **identity},
    )


def embed_chunks(
    loaded: Encoder,
    records: Iterable[FastaRecord] | None,
    *,
    per_residue: bool,
    dtype,
    chunk_records: int,
    progress=None,
) -> Iterator[EmbeddingChunk]:
    """Embeddings of ``records`` a chunk at a time, in input order, as ``dtype``.

    Under torchrun rank 0 reads ``records`` (other ranks pass None), every rank embeds its share
    of each chunk and rank 0 alone gets the whole chunk, which it writes; the other ranks' chunks
    hold ids and lengths, no vectors (``pooled`` has no rows, ``residues`` is None).
    """

    # This chunk's progress, moved with every batch embedded: a chunk can take minutes.
    moved = None

    def embed(sequences: list[str]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        found = embed_sequences(
            loaded.encoder,
            loaded.backbone,
            sequences,
            loaded.runtime,
            per_residue=per_residue,
            progress=moved.over(len(sequences)) if moved is not None else None,
        )
        # Cast before gathering: float16 halves what the ranks exchange.
        rows = found.residues or [None] * len(sequences)
        return [
            (pooled.astype(dtype), None if row is None else row.astype(dtype))
            for pooled, row in zip(found.pooled, rows)
        ]

    for chunk in distributed.broadcast_chunks(records, chunk_records):
        moved = progress.chunk(len(chunk)) if progress is not None else None
        found = distributed.map_sharded(embed, [r.sequence[: loaded.limit] for r in chunk])
        if moved is not None:
            moved.finish()
        ids = [r.id for r in chunk]
        lengths = np.array([len(r.sequence) for r in chunk], dtype=np.int64)
        if found is None:  # this rank's share went to rank 0
            yield EmbeddingChunk(
                ids, lengths, np.empty((0, loaded.backbone.embedding_dim), dtype=dtype), None
            )
            continue
        yield EmbeddingChunk(
            ids,
            lengths,
            np.stack([pooled for pooled, _ in found]),
            [row for _, row in found] if per_residue else None,
        )


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
    shard: str | None = None,
    precision: str = "auto",
) -> int:
    """Embed every record of ``fasta`` (path or ``-``) into ``out``; returns the count.

    Arguments:
        fasta: FASTA path, or ``-`` for standard input.
        out: the file to write (atomically); its suffix picks the format: .npz, .h5/.hdf5 or
            .parquet. Running the same command again after an interruption continues the run.
        backbone_name: use this backbone's pretrained encoder.
        model_name: use this trained model's encoder (fine-tuned, or its backbone's when frozen).
        per_residue: also write every residue's vector.
        float16: store the vectors as float16 (half the size).
        max_tokens: padded tokens per batch; None derives it from the backbone and the device.
        device: auto, cpu, cuda, cuda:N or mps.
        offline: never download weights.
        precision: auto, fp32, bf16 or fp16 (see ``hardware.scoring_precision``); the one used is
            stored in the file's metadata as ``precision``.
        shard: ``I/N`` embeds records I-1, I-1+N, ... only (for array jobs; see ``synnav merge``).
    """
    out = Path(out)
    shard_index, shard_count = distributed.parse_shard(shard) if shard else (0, 1)
    distributed.init()
    check_input(fasta)
    fmt = format_of(out)
    require(fmt)  # a missing h5py or pyarrow fails before any model loads
    check_output_file(out, inputs=[fasta])
    if (backbone_name is None) == (model_name is None):
        raise UserError("give --backbone (its pretrained encoder) or --model (a trained model's)")
    dtype = np.float16 if float16 else np.float32
    main = distributed.is_main()
    with ExitStack() as stack:
        if main:  # SIGTERM leaves whole chunks and no temporary file, as Ctrl-C does
            stack.enter_context(terminated_as_interrupt())
        # Standard input is spooled so that it can be validated whole before anything is embedded.
        source = stack.enter_context(readable_twice(fasta)) if main else fasta
        total = validate_input(source, input_name(source), skip_invalid=False)
        loaded = load_encoder(backbone_name, model_name, device, max_tokens, offline, precision)
        chunk_records = CHUNK_RECORDS_PER_RESIDUE if per_residue else CHUNK_RECORDS
        meta = {
            "format": "synnav-embeddings",
            "synnav": __version__,
            **loaded.identity,
            "max_length": loaded.limit,
            "per_residue": per_residue,
            "dtype": np.dtype(dtype).name,
            "precision": loaded.runtime.precision,
            "shard": f"{shard_index + 1}/{shard_count}" if shard else None,
        }
        store, records, refusal = None, None, None
        if main:
            try:
                # One writer per output: a second run on the same --out is refused at once.
                lock = ResumableOutput.lock_path(out)
                stack.enter_context(exclusive_lock(lock, str(out)))
                sha, _ = input_digest(source)
                meta.update(input_sha256=sha, input_records=total)
                store = EmbeddingStore(out, {**meta, "chunk_records": chunk_records})
                records = distributed.take_shard(read_fasta(source), shard_index, shard_count)
                store.check(records, loaded.backbone.embedding_dim)  # a chunk that misfits: redo
            except UserError as error:
                refusal = str(error)
        # Every rank stops on a refusal, none waits for chunks that will never come.
        refusal = distributed.broadcast(refusal)
        if refusal is not None:
            raise UserError(refusal)
        done = store.proteins_done if store else 0
        if main:
            records = distributed.take_shard(read_fasta(source), shard_index, shard_count)
            records = itertools.islice(records, done, None)
        todo = len(range(shard_index, total, shard_count)) - done
        progress = console.Progress(todo if main else None, "embed")
        stack.callback(progress.close)
        chunks = embed_chunks(
            loaded,
            records,
            per_residue=per_residue,
            dtype=dtype,
            chunk_records=chunk_records,
            progress=progress,
        )
        if not main:  # the other ranks embed; rank 0 keeps, writes and reports
            return sum(len(chunk.ids) for chunk in chunks)
        _keep(chunks, store, loaded.limit)
        return _finish(store, out, fmt, loaded, dtype, meta, shard is not None)


def _keep(chunks: Iterable[EmbeddingChunk], store: EmbeddingStore, limit: int) -> None:
    cut = 0
    try:
        for chunk in chunks:
            store.add(chunk)
            cut += int((chunk.lengths > limit).sum())
    except BaseException as error:
        if store.proteins_done:
            console.info(
                f"{store.proteins_done} finished proteins are kept in {store.folder}; "
                "run the same command again to continue."
            )
        if isinstance(error, OSError):  # a full disk, a lost mount, no permission
            raise UserError(f"writing {store.folder} failed: {error.strerror or error}") from None
        raise
    if cut:
        console.info(
            f"{cut} proteins longer than {limit} residues are embedded over their first {limit}."
        )


def _finish(
    store: EmbeddingStore, out: Path, fmt: str, loaded: Encoder, dtype, meta: dict, sharded: bool
) -> int:
    count = store.proteins_done
    if count == 0 and not sharded:
        raise UserError("no records to embed")
    if count == 0:
        console.warn(f"shard {meta['shard']} holds no records")
    check_output_file(out)  # it may have become something else while the model ran
    try:
        with atomic_path(out) as tmp:
            write_embeddings(tmp, store.source(loaded.backbone.embedding_dim, dtype, meta), fmt)
    except OSError as error:
        raise UserError(f"writing {out} failed: {error.strerror or error}") from None
    # Only now that the whole file is in place do the chunks go.
    store.remove()
    console.info(
        f"Wrote {count} embeddings ({loaded.backbone.embedding_dim} values each) to {out}."
    )
    return count
