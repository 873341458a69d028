"""Homology-aware grouping and splitting of proteins.

Two proteins that share a domain at 30% identity often share a localization signal too. If one
lands in train and the other in test, the test score measures recall of near-copies rather than
generalization. These helpers cluster sequences with MMseqs2 (an external binary; on Debian and
Ubuntu it is the package ``mmseqs2``) and assign whole clusters to train/dev/test.

Nothing here needs torch or click; ``scripts/build_dataset.py`` imports this module directly.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from synnav_cli.errors import UserError

MMSEQS = "mmseqs"
SPLIT_NAMES = ("train", "dev", "test")

_INSTALL_HINT = (
    "install MMseqs2 (Debian/Ubuntu: `apt-get install mmseqs2`; conda: "
    "`conda install -c bioconda mmseqs2`) or split without homology grouping"
)


def mmseqs_available() -> bool:
    """Whether an ``mmseqs`` executable is on ``PATH``."""
    return shutil.which(MMSEQS) is not None


def mmseqs_version() -> str:
    """The version string ``mmseqs version`` prints (e.g. ``14-7e284+ds-1+b2``).

    Raises:
        UserError: mmseqs is missing or does not answer.
    """
    if not mmseqs_available():
        raise UserError(f"mmseqs was not found on PATH: {_INSTALL_HINT}")
    proc = subprocess.run([MMSEQS, "version"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UserError(f"`mmseqs version` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def mmseqs_cluster_options(
    min_seq_id: float = 0.3, coverage: float = 0.8, threads: int = 1, cov_mode: int = 0
) -> list[str]:
    """The options ``cluster_sequences`` passes to ``mmseqs easy-cluster``, for the record.

    Arguments:
        min_seq_id: minimum sequence identity of an alignment that joins two sequences (0-1).
        coverage: minimum fraction of residues the alignment must cover (0-1), see ``cov_mode``.
        threads: MMseqs2 threads. Keep 1 where the clustering must be reproducible.
        cov_mode: MMseqs2 ``--cov-mode``: 0 both sequences covered, 1 the target (member),
            2 the query (representative); see ``mmseqs easy-cluster -h``.
    """
    if not 0.0 <= min_seq_id <= 1.0:
        raise UserError(f"min_seq_id must be between 0 and 1, got {min_seq_id}")
    if not 0.0 <= coverage <= 1.0:
        raise UserError(f"coverage must be between 0 and 1, got {coverage}")
    if threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}")
    if cov_mode not in range(6):
        raise UserError(f"cov_mode must be one of 0-5, got {cov_mode}")
    return [
        "--min-seq-id", f"{min_seq_id:g}",
        "-c", f"{coverage:g}",
        "--cov-mode", str(cov_mode),
        "--threads", str(threads),
        "-v", "1",
    ]  # fmt: skip


def cluster_sequences(
    sequences: Sequence[str],
    min_seq_id: float = 0.3,
    coverage: float = 0.8,
    threads: int = 1,
    *,
    cov_mode: int = 0,
) -> list[int]:
    """Cluster protein sequences with ``mmseqs easy-cluster``; one cluster id per input.

    Cluster ids are numbered in order of first appearance in ``sequences`` (the cluster of the
    first sequence is 0, the next new cluster 1, ...), so they do not depend on the order in
    which MMseqs2 writes its output. Identical sequences always share a cluster.

    Arguments:
        sequences: amino-acid sequences (one letter codes), any order, duplicates allowed.
        min_seq_id: minimum sequence identity to join a cluster (``--min-seq-id``).
        coverage: minimum alignment coverage (``-c``), interpreted per ``cov_mode``.
        threads: MMseqs2 threads; with 1 the result is reproducible run to run.
        cov_mode: MMseqs2 ``--cov-mode`` (0: both sequences, 1: member, 2: representative).

    Raises:
        UserError: mmseqs is missing, an input is empty, or mmseqs fails.
    """
    options = mmseqs_cluster_options(min_seq_id, coverage, threads, cov_mode)
    if not sequences:
        return []
    for i, seq in enumerate(sequences):
        if not seq or any(ch.isspace() or ch in ">;" for ch in seq):
            raise UserError(f"sequence {i} is empty or contains whitespace or '>' / ';'")
    if not mmseqs_available():
        raise UserError(f"mmseqs was not found on PATH: {_INSTALL_HINT}")

    with tempfile.TemporaryDirectory(prefix="synnav-mmseqs-") as tmp:
        work = Path(tmp)
        fasta = work / "input.fasta"
        fasta.write_text("".join(f">s{i}\n{seq}\n" for i, seq in enumerate(sequences)))
        cmd = [MMSEQS, "easy-cluster", str(fasta), str(work / "result"), str(work / "tmp")]
        proc = subprocess.run(cmd + options, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
            raise UserError(
                f"mmseqs easy-cluster failed (exit {proc.returncode}): " + " | ".join(tail)
            )
        table = work / "result_cluster.tsv"
        if not table.is_file():
            raise UserError(f"mmseqs easy-cluster wrote no {table.name}")
        rep_of: dict[int, int] = {}
        for line in table.read_text().splitlines():
            rep, member = line.split("\t")
            rep_of[int(member[1:])] = int(rep[1:])

    missing = [i for i in range(len(sequences)) if i not in rep_of]
    if missing:
        raise UserError(f"mmseqs easy-cluster left {len(missing)} sequences unclustered")
    cluster_of_rep: dict[int, int] = {}
    return [
        cluster_of_rep.setdefault(rep_of[i], len(cluster_of_rep)) for i in range(len(sequences))
    ]


def check_fractions(fractions: Sequence[float]) -> None:
    """Raise ``UserError`` unless ``fractions`` are three non-negative numbers summing to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}"
        )


def split_groups(
    group_ids: Sequence[int],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> list[str]:
    """Assign "train" / "dev" / "test" to each item, keeping every group inside one split.

    This is synnav's one split rule: ``data.assign_splits`` (groups of identical sequences),
    ``synnav split`` and ``scripts/build_dataset.py`` (MMseqs2 clusters) all call it.

    The groups are put in a seeded random order (``random.Random(seed)``, stable across Python
    versions and platforms). Each group in turn goes to the split that, after receiving it, is
    least full relative to its target (``count / (fraction * n_items)``; ties go to the earlier
    split). Item counts therefore land close to the target fractions, off by at most about one
    group's size where groups are large.

    Arguments:
        group_ids: one group id per item (e.g. from ``cluster_sequences``); any hashable ints.
        fractions: target fractions of items for train, dev and test; they must sum to 1.
        seed: seed of the group order; the same seed and groups give the same split.

    Returns:
        One split name per item, in input order.

    Raises:
        UserError: the fractions are not three non-negative numbers summing to 1.
    """
    check_fractions(fractions)
    sizes: dict[int, int] = {}
    for gid in group_ids:
        sizes[gid] = sizes.get(gid, 0) + 1
    order = list(sizes)  # first-appearance order: independent of hash seeds
    random.Random(seed).shuffle(order)

    n = len(group_ids)
    targets = [f * n for f in fractions]
    counts = [0, 0, 0]
    split_of: dict[int, int] = {}
    for gid in order:
        size = sizes[gid]
        candidates = [k for k in range(3) if targets[k] > 0]
        best = min(candidates, key=lambda k: ((counts[k] + size) / targets[k], k))
        split_of[gid] = best
        counts[best] += size
    return [SPLIT_NAMES[split_of[gid]] for gid in group_ids]
