"""Nearest training protein by MMseqs2 (``mmseqs easy-search``), when it is installed.

The best hit by bit score with an E-value of at most :data:`EVALUE` is the nearest; identity is
MMseqs2's ``fident`` (identical residues / alignment columns) and coverage its ``qcov`` (the
share of the query the alignment covers). No hit: no neighbour, identity and coverage 0.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from synnav_cli.data.homology import MMSEQS, mmseqs_available
from synnav_cli.domain.index import DomainIndex, Neighbour
from synnav_cli.errors import UserError

EVALUE = 1e-3


class MmseqsSearch:
    """Searches against the index's training proteins, written once to a private folder."""

    def __init__(self, index: DomainIndex, threads: int = 1):
        if not mmseqs_available():
            raise UserError("mmseqs was not found on PATH")
        self.index, self.threads = index, threads
        self._work = Path(tempfile.mkdtemp(prefix="synnav-domain-"))
        self._target = self._work / "training.fasta"
        with self._target.open("w") as handle:
            for i in range(len(index)):
                handle.write(f">t{i}\n{index.sequence(i)}\n")

    def close(self) -> None:
        shutil.rmtree(self._work, ignore_errors=True)

    def nearest(self, sequences: Sequence[str]) -> list[Neighbour]:
        found = [Neighbour(None) for _ in sequences]
        if not sequences:
            return found
        query, result = self._work / "query.fasta", self._work / "result.m8"
        with query.open("w") as handle:
            for i, sequence in enumerate(sequences):
                handle.write(f">q{i}\n{sequence}\n")
        command = [
            MMSEQS, "easy-search", str(query), str(self._target), str(result),
            str(self._work / "tmp"),
            "--format-output", "query,target,fident,qcov,bits",
            "-e", f"{EVALUE:g}", "--threads", str(self.threads), "-v", "1",
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:])
            raise UserError(f"mmseqs easy-search failed (exit {proc.returncode}): {tail}")
        best_bits = [-1.0] * len(sequences)
        for line in result.read_text().splitlines():
            name, target, fident, qcov, bits = line.split("\t")
            q, t = int(name[1:]), int(target[1:])
            if float(bits) > best_bits[q]:
                best_bits[q] = float(bits)
                found[q] = Neighbour(t, float(fident), min(1.0, float(qcov)))
        return found
