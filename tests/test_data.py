import io
import json

import numpy as np
import pytest

from synnav_cli.data.dataset import assign_splits, read_dataset
from synnav_cli.data.fasta import read_fasta
from synnav_cli.errors import UserError


def fasta(text: str):
    return list(read_fasta(io.StringIO(text)))


def test_reads_records_in_order_and_normalises():
    records = fasta(">a first protein\nmkv\nLL*\n\n>b\nACDE\n")
    assert [(r.id, r.description, r.sequence) for r in records] == [
        ("a", "first protein", "MKVLL"), ("b", "", "ACDE")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("MKV\n>a\nMK\n", "not FASTA"),
        (">a\n\n>b\nMK\n", "empty sequence"),
        (">a\nMK1V\n", "not amino-acid codes"),
        (">a\nMK-V\n", "not amino-acid codes"),
        (">a\nMK\n>a\nMV\n", "duplicate identifier"),
        (">\nMK\n", "empty header"),
    ],
)
def test_bad_fasta_is_a_user_error(text, message):
    with pytest.raises(UserError, match=message):
        fasta(text)


def test_binary_file_is_a_user_error(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_bytes(b">a\n\xff\xfe\x00\n")
    with pytest.raises(UserError, match="not a text file"):
        list(read_fasta(path))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        list(read_fasta(tmp_path / "nope.fasta"))


def test_origin_json_with_unknown_labels(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([
        {"Entry": "P1", "Sequence": "MKV", "labels": {"cytosol": 1, "ER": 0}, "split": "train"},
        {"entry": "P2", "sequence": "MKA", "labels": {"cytosol": None, "nucleus": 1}, "split": "test"},
    ]))
    data = read_dataset(path)
    assert data.label_names == ["cytosol", "ER", "nucleus"]
    assert data.splits == ["train", "test"]
    expected = np.array([[1, 0, np.nan], [np.nan, np.nan, 1]], dtype=np.float32)
    np.testing.assert_array_equal(data.labels, expected)
    assert data.label_counts()["cytosol"] == {"positive": 1, "negative": 0, "unknown": 1}


def test_csv_and_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("id\tsequence\tER\tnucleus\nA\tMKV\t1\t\nB\tMKK\t0\t1\n")
    data = read_dataset(path)
    assert data.entries == ["A", "B"] and data.splits is None
    assert np.isnan(data.labels[0, 1]) and data.labels[1, 1] == 1
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("entry,sequence,split,ER\nA,MKV,train,1\nB,MKK,dev,0\n")
    assert read_dataset(csv_path).splits == ["train", "dev"]


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "no records"),
        ([{"entry": "A", "sequence": "MK", "labels": {"ER": 2}}], "expected 0, 1"),
        ([{"entry": "A", "sequence": "MK"}], "needs 'entry'"),
        ([{"entry": "A", "sequence": "MK", "labels": {"ER": 1}, "split": "holdout"}], "split"),
        ([{"entry": "A", "sequence": "M1", "labels": {"ER": 1}}], "amino-acid"),
        ([{"entry": "A", "sequence": "MK", "labels": {"ER": 1}}] * 2, "duplicate entry"),
        ([{"entry": "A", "sequence": "MK", "labels": {"ER": 1}, "split": "train"},
          {"entry": "B", "sequence": "MK", "labels": {"ER": 1}}], "no split"),
    ],
)
def test_bad_datasets(tmp_path, records, message):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    with pytest.raises(UserError, match=message):
        read_dataset(path)


def test_not_json(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        read_dataset(path)


def make_unsplit(tmp_path, n=200, duplicates=20):
    rng = np.random.default_rng(1)
    records = []
    for i in range(n):
        seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 30))
        records.append({"entry": f"P{i}", "sequence": seq, "labels": {"ER": int(i % 3 == 0)}})
    for i in range(duplicates):  # the same sequence under another entry
        records.append({"entry": f"D{i}", "sequence": records[i]["sequence"], "labels": {"ER": 1}})
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    return read_dataset(path)


def test_seeded_split_keeps_identical_sequences_together(tmp_path):
    data = assign_splits(make_unsplit(tmp_path), seed=0)
    by_sequence = {}
    for seq, split in zip(data.sequences, data.splits):
        by_sequence.setdefault(seq, set()).add(split)
    assert all(len(s) == 1 for s in by_sequence.values())
    counts = {s: data.splits.count(s) for s in ("train", "dev", "test")}
    assert abs(counts["train"] / len(data) - 0.7) < 0.05
    assert abs(counts["dev"] / len(data) - 0.15) < 0.05
    again = assign_splits(make_unsplit(tmp_path), seed=0)
    other = assign_splits(make_unsplit(tmp_path), seed=1)
    assert again.splits == data.splits and other.splits != data.splits


def test_own_split_is_kept(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"entry": "A", "sequence": "MK", "labels": {"ER": 1}, "split": "test"}]))
    assert assign_splits(read_dataset(path), seed=3).splits == ["test"]
