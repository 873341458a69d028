"""``synnav embed --out FILE`` that resumes: finished chunks wait in ``FILE.partial/``.

After every chunk of proteins the run writes ``FILE.partial/chunk-NNNNNN.npz`` (plain arrays,
read back with ``allow_pickle=False``) and then ``manifest.json``: how many proteins each chunk
holds, a sha256 of the whole input and what else decides the numbers (model, options, shard).
Both are written atomically, so a kill at any moment leaves whole chunks and a manifest that
lists only whole chunks.

The same command run again reads the manifest, checks the input and options are the ones it was
made with (refusing otherwise, never mixing two runs in one file), checks that every chunk holds
what this run would write there (the input's proteins in order, their lengths and residues,
vectors of the model's size and the dtype asked for; from a chunk that does not, the proteins
are embedded again, said in one line), skips the proteins already done and embeds the rest. An
unreadable manifest starts the run over. The final file is assembled from the chunks, renamed
into place, and only then is the partial folder removed: file names are derived from chunk
numbers, never read from the manifest, and nothing but those names is deleted.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from synnav_cli import console
from synnav_cli.data.fasta import FastaRecord
from synnav_cli.errors import UserError
from synnav_cli.files import make_real_folder, real_folder, replace_atomically, write_json_atomic
from synnav_cli.predict.embed_files import EmbeddingChunk, EmbeddingSource
from synnav_cli.predict.embed_layout import check_layout, npy_shapes

MANIFEST = "manifest.json"
VERSION = 1


class EmbeddingStore:
    """The chunks an ``embed --out`` run has finished, in ``out.partial/``.

    ``fingerprint`` (JSON-able) must match the one an interrupted run recorded for its chunks to
    be used; its ``input_sha256`` key names the input, so a changed input gets its own message.
    """

    def __init__(self, out: Path, fingerprint: dict) -> None:
        self.out = Path(out)
        self.folder = self.out.with_name(self.out.name + ".partial")
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from disk
        self.sizes: list[tuple[int, int | None]] = []  # (proteins, residues) per chunk
        self._listed = 0  # chunks the manifest lists, which :meth:`remove` deletes too
        self._load()

    def _chunk_path(self, number: int) -> Path:
        return self.folder / f"chunk-{number:06d}.npz"

    def _load(self) -> None:
        manifest = self.folder / MANIFEST
        if not real_folder(self.folder) or not manifest.is_file():
            return
        try:
            state = json.loads(manifest.read_text(encoding="utf-8"))
            sizes = [(p, r) for p, r in state["chunks"] if self._size(p, r)]
            recorded = state["fingerprint"]
            if len(sizes) != len(state["chunks"]):
                raise ValueError("a chunk size that cannot be")
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            console.warn(f"{manifest} is unreadable; starting {self.out} from scratch")
            return
        if not isinstance(recorded, dict) or recorded != self.fingerprint:
            what = (
                "another input"
                if isinstance(recorded, dict)
                and recorded.get("input_sha256") != self.fingerprint.get("input_sha256")
                else "another model or other options"
            )
            raise UserError(
                f"{self.folder} holds an interrupted run of {what}; "
                f"run the same command as before, or delete {self.folder} to start over"
            )
        self._listed = len(sizes)
        for number, size in enumerate(sizes):
            if not self._chunk_path(number).is_file():
                console.warn(f"{self._chunk_path(number)} is missing; redoing from there")
                break
            self.sizes.append(size)

    def _size(self, proteins, residues) -> bool:
        """Whether a manifest's (proteins, residues) of a chunk can be one this run wrote."""
        whole = [type(n) is int for n in (proteins, residues)]  # not bool, float or text
        per_residue = bool(self.fingerprint.get("per_residue"))
        return (
            whole[0]
            and 1 <= proteins <= self.fingerprint.get("chunk_records", 0)
            and (whole[1] and residues >= 0 if per_residue else residues is None)
        )

    def check(self, records: Iterable[FastaRecord], dim: int) -> None:
        """Keep the chunks that hold what this run writes for ``records`` (the input's share, in
        order) with vectors of ``dim`` values; from the first that does not, the proteins are
        embedded again, said in one line. Then says what a resume skips."""
        records = iter(records)
        for number, size in enumerate(self.sizes):
            expected = list(itertools.islice(records, size[0]))
            problem = self._misfit(number, size, expected, dim)
            if problem:
                console.warn(
                    f"{self._chunk_path(number)} {problem}; embedding proteins from "
                    f"{sum(p for p, _ in self.sizes[:number]) + 1} on again"
                )
                del self.sizes[number:]
                break
        if self.sizes:
            console.info(f"Resuming {self.out}: {self.proteins_done} proteins already done.")

    def _misfit(self, number: int, size: tuple, expected: list[FastaRecord], dim: int) -> str:
        """What chunk ``number`` holds that this run would not have written there, or ''."""
        proteins, residues = size
        if len(expected) != proteins:
            return f"holds {proteins} proteins where the input has {len(expected)} left"
        path, fingerprint = self._chunk_path(number), self.fingerprint
        try:
            with zipfile.ZipFile(path) as archive:
                count, width, dtype, rows = check_layout(npy_shapes(archive))
            with np.load(path, allow_pickle=False) as saved:
                ids, lengths = saved["ids"].tolist(), saved["lengths"].tolist()
                offsets = saved["offsets"] if rows is not None else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, UserError) as error:
            return f"is not a chunk synnav can read ({error})"
        if (width, dtype.name) != (dim, fingerprint.get("dtype")):
            return f"holds {width} {dtype.name} values a protein, not {dim} {fingerprint['dtype']}"
        if (rows is not None) != bool(fingerprint.get("per_residue")):
            return "holds residue vectors" if rows is not None else "holds no residue vectors"
        if count != proteins or ids != [r.id for r in expected]:
            return "holds other proteins than the input has there"
        if lengths != [len(r.sequence) for r in expected]:
            return "holds other lengths than the input's proteins have"
        if offsets is not None:
            cut = np.minimum(lengths, fingerprint.get("max_length", 0))
            if rows != residues or offsets.tolist() != [0, *np.cumsum(cut).tolist()]:
                return "holds other residues than the input's proteins have"
        return ""

    @property
    def proteins_done(self) -> int:
        return sum(proteins for proteins, _ in self.sizes)

    @property
    def resuming(self) -> bool:
        return bool(self.sizes)

    def add(self, chunk: EmbeddingChunk) -> None:
        """Keep ``chunk`` on disk, then record it: a kill between the two loses only it."""
        make_real_folder(self.folder)
        arrays = {
            "ids": np.array(chunk.ids, dtype=str),
            "lengths": np.asarray(chunk.lengths, dtype=np.int64),
            "embeddings": chunk.pooled,
        }
        residues = None
        if chunk.residues is not None:
            residues = sum(len(r) for r in chunk.residues)
            arrays["offsets"] = np.concatenate([[0], np.cumsum([len(r) for r in chunk.residues])])
            arrays["residue_embeddings"] = (
                np.concatenate(chunk.residues) if residues else chunk.pooled[:0]
            )

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, **arrays)

        replace_atomically(self._chunk_path(len(self.sizes)), write)
        self.sizes.append((len(chunk.ids), residues))
        write_json_atomic(
            self.folder / MANIFEST,
            {"version": VERSION, "fingerprint": self.fingerprint, "chunks": self.sizes},
        )

    def _read(self, number: int) -> EmbeddingChunk:
        path = self._chunk_path(number)
        try:
            with np.load(path, allow_pickle=False) as saved:
                pooled = saved["embeddings"]
                residues = None
                if "offsets" in saved.files:
                    offsets, flat = saved["offsets"], saved["residue_embeddings"]
                    residues = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
                chunk = EmbeddingChunk(
                    [str(i) for i in saved["ids"]], saved["lengths"], pooled, residues
                )
        except (OSError, ValueError, KeyError) as error:
            raise UserError(
                f"{path} is damaged ({error}); delete {self.folder} to start over"
            ) from None
        if len(chunk.ids) != self.sizes[number][0]:
            raise UserError(f"{path} does not hold what {MANIFEST} says; delete {self.folder}")
        return chunk

    def source(self, dim: int, dtype, meta: dict) -> EmbeddingSource:
        """Every stored chunk, in order, for a writer."""
        per_residue = bool(self.fingerprint.get("per_residue"))

        def chunks() -> Iterator[EmbeddingChunk]:
            for number in range(len(self.sizes)):
                yield self._read(number)

        total = sum(r or 0 for _, r in self.sizes) if per_residue else None
        return EmbeddingSource(self.proteins_done, dim, np.dtype(dtype), total, meta, chunks)

    def remove(self) -> None:
        """Delete the chunks and the manifest (the final file is in place), then the folder."""
        if not real_folder(self.folder):
            return
        # +1: a chunk a kill wrote but never recorded.
        for number in range(max(len(self.sizes), self._listed) + 1):
            self._chunk_path(number).unlink(missing_ok=True)
        (self.folder / MANIFEST).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            console.warn(f"{self.folder} holds files synnav did not write; left in place")
