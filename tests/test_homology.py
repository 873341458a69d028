"""Homology grouping and group-preserving splits (synnav_cli.data.homology)."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter

import pytest

from synnav_cli.cli.main import cli
from synnav_cli.data import homology
from synnav_cli.data.dataset import assign_splits, read_dataset
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


# `synnav split`: a copy of a dataset with a homology-aware split.

def _split_records() -> list[dict]:
    """Two families of near-copies among unrelated random proteins; one record carries extras."""
    rng = random.Random(7)
    families = {"ubi": [UBIQUITIN, _mutate(UBIQUITIN, 10), _mutate(UBIQUITIN, 7)],
                "ins": [INSULIN, _mutate(INSULIN, 8)]}
    records = [{"entry": f"{name}{i}", "sequence": seq, "labels": {"ER": i % 2, "nucleus": None}}
               for name, seqs in families.items() for i, seq in enumerate(seqs)]
    for i in range(20):
        seq = "M" + "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(90))
        records.append({"entry": f"R{i}", "sequence": seq, "labels": {"ER": int(i % 3 == 0), "nucleus": i % 2}})
    records[0]["note"] = "kept as it is"
    for record in records:
        record["split"] = "train"  # an existing split is replaced for every record
    return records


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


needs_mmseqs = pytest.mark.skipif(not homology.mmseqs_available(), reason="mmseqs is not installed")

# What `synnav split` got from MMseqs2, per input, for this module's split-command tests.
_CLUSTERINGS: dict[tuple, list[int]] = {}


@pytest.fixture
def clustered_once(monkeypatch):
    """MMseqs2 runs once per distinct input across the split-command tests below; later calls
    get the same answer. An easy-cluster call takes about 15 s even on this handful of proteins
    (its prefilter builds a k-mer table for the whole alphabet, three times over), and these
    tests are about the command: the clustering itself, and that it repeats exactly, is
    test_cluster_sequences_groups_homologs's."""
    real = homology.cluster_sequences

    def remembered(sequences, *args, **kwargs):
        key = (tuple(sequences), args, tuple(sorted(kwargs.items())))
        if key not in _CLUSTERINGS:
            _CLUSTERINGS[key] = real(sequences, *args, **kwargs)
        return list(_CLUSTERINGS[key])

    monkeypatch.setattr(homology, "cluster_sequences", remembered)


@needs_mmseqs
def test_split_command_writes_a_homology_aware_copy(runner, tmp_path, clustered_once):
    records = _split_records()
    data = _write(tmp_path / "d.json", records)
    before = data.read_bytes()
    out = tmp_path / "out" / "split.json"
    result = runner.invoke(cli, ["split", str(data), "--out", str(out), "--fractions", "0.5,0.25,0.25",
                                 "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "clusters" in result.stderr and "Replaced the split" in result.stderr
    assert data.read_bytes() == before  # the input is untouched
    written = json.loads(out.read_text())
    assert [r["entry"] for r in written] == [r["entry"] for r in records]
    for old, new in zip(records, written):
        assert {k: v for k, v in new.items() if k != "split"} == {k: v for k, v in old.items() if k != "split"}
    split_of = {r["entry"]: r["split"] for r in written}
    assert split_of["ubi0"] == split_of["ubi1"] == split_of["ubi2"]
    assert split_of["ins0"] == split_of["ins1"]
    assert set(split_of.values()) == {"train", "dev", "test"}
    assert read_dataset(out).splits == [r["split"] for r in written]  # synnav reads it back
    assert [p.name for p in out.parent.iterdir()] == ["split.json"]  # no temporary file left


@needs_mmseqs
def test_split_command_is_reproducible_and_seeded(runner, tmp_path, clustered_once):
    data = _write(tmp_path / "d.json", _split_records())
    outputs = []
    for name, seed in (("a.json", "0"), ("b.json", "0"), ("c.json", "1")):
        result = runner.invoke(cli, ["split", str(data), "--out", str(tmp_path / name), "--seed", seed])
        assert result.exit_code == 0, result.output
        outputs.append([r["split"] for r in json.loads((tmp_path / name).read_text())])
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


@needs_mmseqs
def test_split_command_tsv_gets_a_split_column(runner, tmp_path, clustered_once):
    records = _split_records()
    data = tmp_path / "d.tsv"
    lines = ["entry\tsequence\tER"] + [f"{r['entry']}\t{r['sequence']}\t{r['labels']['ER']}" for r in records]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "split.tsv"
    result = runner.invoke(cli, ["split", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    assert list(rows[0]) == ["entry", "sequence", "split", "ER"]
    assert [row["entry"] for row in rows] == [r["entry"] for r in records]
    assert rows[0]["split"] == rows[1]["split"] == rows[2]["split"]
    assert read_dataset(out).splits == [row["split"] for row in rows]


@needs_mmseqs
def test_split_command_never_overwrites_without_force(runner, tmp_path, clustered_once):
    data = _write(tmp_path / "d.json", _split_records())
    out = tmp_path / "split.json"
    out.write_text("precious")
    result = runner.invoke(cli, ["split", str(data), "--out", str(out)])
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_text() == "precious"
    result = runner.invoke(cli, ["split", str(data), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())) == len(_split_records())


def test_split_command_refuses_to_overwrite_its_input(runner, tmp_path):
    data = _write(tmp_path / "d.json", _split_records())
    before = data.read_bytes()
    result = runner.invoke(cli, ["split", str(data), "--out", str(data), "--force"])
    assert result.exit_code == 1
    assert "input" in result.stderr and "Traceback" not in result.output
    assert data.read_bytes() == before


def test_split_command_without_mmseqs_is_one_line(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(homology.shutil, "which", lambda name: None)
    data = _write(tmp_path / "d.json", _split_records())
    out = tmp_path / "split.json"
    result = runner.invoke(cli, ["split", str(data), "--out", str(out)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "mmseqs" in lines[0] and "apt-get install mmseqs2" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("fractions", ["0.7,0.3", "0.7,0.2,0.2", "a,b,c"])
def test_split_command_rejects_bad_fractions(runner, tmp_path, fractions):
    data = _write(tmp_path / "d.json", _split_records())
    result = runner.invoke(cli, ["split", str(data), "--out", str(tmp_path / "s.json"), "--fractions", fractions])
    assert result.exit_code == 1
    assert "fractions" in result.stderr
    assert not (tmp_path / "s.json").exists()


def test_assign_splits_uses_the_same_rule(tmp_path):
    """Unsplit datasets are split by homology.split_groups over identical-sequence groups."""
    records = [{k: v for k, v in r.items() if k != "split"} for r in _split_records()]
    dataset = read_dataset(_write(tmp_path / "d.json", records))
    groups = {s: i for i, s in enumerate(dict.fromkeys(dataset.sequences))}
    expected = homology.split_groups([groups[s] for s in dataset.sequences], (0.7, 0.15, 0.15), 4)
    assert assign_splits(dataset, seed=4).splits == expected
