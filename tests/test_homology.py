"""Homology grouping and group-preserving splits (synnav_cli.homology)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from synnav_cli import homology
from synnav_cli.errors import UserError


def _groups(seed: int = 1, n_groups: int = 600) -> list[int]:
    """Many small groups and a few large ones, shuffled: like real protein families."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 1, 1, 1, 2, 2, 3, 5]) for _ in range(n_groups)] + [40, 25, 15]
    ids = [gid for gid, size in enumerate(sizes) for _ in range(size)]
    rng.shuffle(ids)
    return ids


def test_split_keeps_each_group_in_one_split():
    ids = _groups()
    splits = homology.split_groups(ids)
    seen: dict[int, set[str]] = {}
    for gid, split in zip(ids, splits):
        seen.setdefault(gid, set()).add(split)
    assert all(len(s) == 1 for s in seen.values())
    assert set(splits) == {"train", "dev", "test"}


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25)])
def test_split_fractions_close_to_target(fractions):
    ids = _groups()
    counts = Counter(homology.split_groups(ids, fractions, seed=3))
    for name, target in zip(homology.SPLIT_NAMES, fractions):
        assert abs(counts[name] / len(ids) - target) < 0.02, (name, counts)


def test_singletons_split_almost_exactly():
    counts = Counter(homology.split_groups(list(range(1000))))
    assert counts == {"train": 700, "dev": 150, "test": 150}


def test_split_is_deterministic_and_seeded():
    ids = _groups()
    first = homology.split_groups(ids, seed=0)
    assert homology.split_groups(list(ids), seed=0) == first
    assert homology.split_groups(ids, seed=1) != first


def test_split_does_not_depend_on_group_id_values():
    """Relabelling the groups (same partition, same first-appearance order) changes nothing."""
    ids = _groups()
    relabelled = [gid * 7 + 1000 for gid in ids]
    assert homology.split_groups(relabelled, seed=5) == homology.split_groups(ids, seed=5)


def test_split_with_a_zero_fraction_leaves_that_split_empty():
    counts = Counter(homology.split_groups(_groups(), (0.8, 0.2, 0.0)))
    assert counts["test"] == 0 and counts["train"] > counts["dev"] > 0


def test_split_empty_input():
    assert homology.split_groups([]) == []


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(UserError, match="fractions"):
        homology.split_groups([0, 1, 2], fractions)


def test_cluster_options_are_validated():
    with pytest.raises(UserError, match="min_seq_id"):
        homology.mmseqs_cluster_options(min_seq_id=1.5)
    with pytest.raises(UserError, match="threads"):
        homology.mmseqs_cluster_options(threads=0)
    assert "--min-seq-id" in homology.mmseqs_cluster_options()


def test_cluster_without_mmseqs_is_a_user_error(monkeypatch):
    monkeypatch.setattr(homology.shutil, "which", lambda name: None)
    assert not homology.mmseqs_available()
    with pytest.raises(UserError, match="mmseqs"):
        homology.cluster_sequences(["MKTAYIAKQR"])


def test_cluster_rejects_empty_sequences():
    with pytest.raises(UserError, match="empty"):
        homology.cluster_sequences(["MKTAYIAKQR", ""])


# Three unrelated real proteins (human ubiquitin, insulin precursor, histone H4) and
# near-copies of two of them.
UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
INSULIN = (
    "MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKTRREAEDLQVGQVELGGGPGAGSLQ"
    "PLALEGSLQKRGIVEQCCTSICSLYQLENYCN"
)
HISTONE_H4 = (
    "MSGRGKGGKGLGKGGAKRHRKVLRDNIQGITKPAIRRLARRGGVKRISGLIYEETRGVLKVFLENVIRDAVTYTEHAKRK"
    "TVTAMDVVYALKRQGRTLYGFGG"
)


def _mutate(seq: str, every: int) -> str:
    return "".join(("A" if ch != "A" else "G") if i % every == 0 else ch for i, ch in enumerate(seq))


@pytest.mark.skipif(not homology.mmseqs_available(), reason="mmseqs is not installed")
def test_cluster_sequences_groups_homologs():
    seqs = [UBIQUITIN, INSULIN, _mutate(UBIQUITIN, 10), HISTONE_H4, _mutate(INSULIN, 8), UBIQUITIN]
    ids = homology.cluster_sequences(seqs)
    assert len(ids) == len(seqs)
    assert ids[0] == 0  # numbered by first appearance
    assert ids[0] == ids[2] == ids[5]
    assert ids[1] == ids[4]
    assert len({ids[0], ids[1], ids[3]}) == 3
    assert homology.cluster_sequences(seqs) == ids  # reproducible


@pytest.mark.skipif(not homology.mmseqs_available(), reason="mmseqs is not installed")
def test_mmseqs_version_reports_something():
    assert homology.mmseqs_version()
