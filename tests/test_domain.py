"""The applicability domain: the index a model keeps of its training proteins, the k-mer and
MMseqs2 nearest-protein searches, and predict's domain columns."""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import launch
import numpy as np
import pytest
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.data.dataset import read_dataset
from synnav_cli.data.homology import mmseqs_available
from synnav_cli.domain.assess import DOMAIN_COLUMNS, classify
from synnav_cli.domain.index import (
    ALPHABET,
    INDEX_FILE,
    Neighbour,
    Thresholds,
    read_index,
    write_index,
)
from synnav_cli.domain.kmer import KmerSearch
from synnav_cli.errors import UserError
from synnav_cli.resources import bundled_dataset_path, bundled_model_path

RNG_LETTERS = np.array(list(ALPHABET))


def _random_protein(rng, length: int) -> str:
    return "".join(rng.choice(RNG_LETTERS, size=length))


def _mutant(rng, sequence: str, share: float) -> tuple[str, float]:
    """``sequence`` with ``share`` of its positions changed to another residue; its identity."""
    letters = list(sequence)
    positions = rng.choice(len(letters), size=round(share * len(letters)), replace=False)
    for p in positions:
        letters[p] = rng.choice([c for c in ALPHABET if c != letters[p]])
    return "".join(letters), 1 - len(positions) / len(letters)


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


@pytest.fixture
def index_dir(tmp_path):
    rng = np.random.default_rng(0)
    sequences = [_random_protein(rng, int(n)) for n in rng.integers(80, 400, size=40)]
    ids = [f"train{i}" for i in range(len(sequences))]
    write_index(tmp_path / INDEX_FILE, ids, sequences, rng.normal(size=(40, 8)), None)
    return tmp_path, sequences


def test_kmer_identity_is_exact_on_substituted_copies(index_dir):
    folder, sequences = index_dir
    search = KmerSearch(read_index(folder))
    rng = np.random.default_rng(1)
    queries, expected = [], []
    for k, share in enumerate((0.0, 0.05, 0.1, 0.2, 0.3)):
        mutant, identity = _mutant(rng, sequences[k], share)
        queries.append(mutant)
        expected.append(identity)
    found = search.nearest(queries)
    assert [n.index for n in found] == [0, 1, 2, 3, 4]
    for neighbour, identity in zip(found, expected):
        # Substitutions keep the alignment ungapped: identity is counted residue by residue.
        assert neighbour.identity == pytest.approx(identity, abs=0.03)
        assert neighbour.coverage > 0.85


def test_kmer_finds_no_neighbour_for_shuffled_or_foreign(index_dir):
    folder, sequences = index_dir
    rng = np.random.default_rng(2)
    shuffled = "".join(rng.permutation(list(sequences[0])))
    foreign = _random_protein(rng, 300)
    found = KmerSearch(read_index(folder)).nearest([shuffled, foreign, "W" * 50])
    assert all(n.index is None or n.coverage < 0.1 for n in found)


def test_kmer_aligns_across_an_insertion(index_dir):
    folder, sequences = index_dir
    rng = np.random.default_rng(3)
    original = sequences[6]
    middle = len(original) // 2
    query = original[:middle] + _random_protein(rng, 15) + original[middle:]
    (neighbour,) = KmerSearch(read_index(folder)).nearest([query])
    assert neighbour.index == 6
    assert neighbour.identity > 0.97
    assert neighbour.coverage > 0.85


def test_kmer_training_tables_are_the_ones_each_protein_gives_alone(tmp_path):
    """KmerSearch builds its training k-mers in one pass over the joined residues and its
    k-mer x protein matrix k-mer first; both must equal what one protein at a time gives, also
    for proteins shorter than a k-mer and windows holding X."""
    from synnav_cli.domain import kmer

    rng = np.random.default_rng(5)
    sequences = [_random_protein(rng, int(n)) for n in rng.integers(1, 60, size=30)]
    sequences[3] = "ACD"  # no k-mer
    sequences[4] = sequences[4][:10] + "X" + sequences[4][11:] + "X"
    write_index(tmp_path / INDEX_FILE, [f"t{i}" for i in range(30)], sequences,
                rng.normal(size=(30, 4)), None)  # fmt: skip
    index = read_index(tmp_path)
    search = KmerSearch(index)

    def one_by_one(codes):  # the definition: each window of K standard residues, base 20
        windows = [codes[i : i + kmer.K] for i in range(len(codes) - kmer.K + 1)]
        return [-1 if (w == 20).any() else int(sum(int(c) * 20**(kmer.K - 1 - j)
                for j, c in enumerate(w))) for w in windows]  # fmt: skip

    alone = [one_by_one(index.sequence_codes(i)) for i in range(len(index))]
    assert [k.tolist() for k in search._kmers] == alone
    dense = np.zeros((len(index), kmer.SPACE), dtype=bool)
    for row, values in enumerate(alone):
        dense[row, [v for v in values if v >= 0]] = True
    expected = kmer._presence(search._kmers).T.tocsr()
    assert expected.nnz == dense.sum()
    for got in (search._training, expected):
        assert got.shape == (kmer.SPACE, len(index)) and got.has_sorted_indices
        rows, columns = got.nonzero()
        assert np.array_equal(np.sort(rows * len(index) + columns),
                              np.sort(np.nonzero(dense.T.ravel())[0]))  # fmt: skip
    assert np.array_equal(search._training.indptr, expected.indptr)
    assert np.array_equal(search._training.indices, expected.indices)


def test_classify_reads_identity_then_distance():
    t = Thresholds(distance_in=0.1, distance_out=0.3)
    assert classify(Neighbour(3, 1.0, 1.0), None, t) == "in"
    assert classify(Neighbour(None), 0.05, t) == "in"
    assert classify(Neighbour(None), 0.2, t) == "edge"
    assert classify(Neighbour(None), 0.4, t) == "out"
    assert classify(Neighbour(3, 0.4, 0.9), 0.4, t) == "edge"  # a distant homologue: not out
    assert classify(Neighbour(None), 0.4, None) == "unknown"
    assert classify(Neighbour(None), None, t) == "unknown"


def test_the_models_implausibility_score_calls_out():
    t = Thresholds(distance_in=0.1, distance_out=0.3, implausible_out=4.0)
    assert classify(Neighbour(None), 0.05, t, 20.0) == "out"  # near in embedding, yet no protein
    assert classify(Neighbour(None), 0.05, t, 3.9) == "in"
    assert classify(Neighbour(3, 1.0, 1.0), 0.05, t, 20.0) == "in"  # a training protein's copy
    assert classify(Neighbour(None), 0.05, Thresholds(0.1, 0.3), 20.0) == "in"  # no threshold


def test_dev_sets_the_implausibility_threshold_and_the_index_keeps_it(tmp_path):
    from synnav_cli.domain.assess import dev_thresholds

    assert dev_thresholds(np.array([0.1, 0.2])).implausible_out is None
    assert dev_thresholds(np.array([0.1, 0.2]), np.array([0.0, 0.2])).implausible_out == 1.0
    t = dev_thresholds(np.array([0.1, 0.2]), np.array([0.3, 1.9]))
    assert t.implausible_out == 3.8
    rng = np.random.default_rng(0)
    write_index(tmp_path / INDEX_FILE, ["a", "b"], ["MKT", "MLV"], rng.normal(size=(2, 4)), t)
    assert read_index(tmp_path).thresholds == t
    older = Thresholds(0.1, 0.2)  # an index written before the score: five thresholds
    write_index(tmp_path / INDEX_FILE, ["a", "b"], ["MKT", "MLV"], rng.normal(size=(2, 4)), older)
    assert read_index(tmp_path).thresholds.implausible_out is None


@pytest.mark.parametrize("value", [-1.0, "3", float("inf"), True])
def test_a_crafted_implausibility_threshold_is_one_line(tmp_path, value):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(0)
    path = tmp_path / INDEX_FILE
    write_index(path, ["a"], ["MKT"], rng.normal(size=(1, 4)), Thresholds(0.1, 0.2, 0.5, 0.5, 0.3, 4.0))
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    values = json.loads(meta["thresholds"])
    values["implausible_out"] = value
    meta["thresholds"] = json.dumps(values)
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(UserError) as error:
        read_index(tmp_path)
    assert "\n" not in str(error.value)


def _damage(path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "header", "codes", "link", "garbage"])
def test_a_damaged_index_is_one_line(index_dir, tmp_path_factory, damage):
    folder, _ = index_dir
    path = folder / INDEX_FILE
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "header":
        _damage(path, 0, struct.pack("<Q", 10**15))
    elif damage == "codes":
        # A residue code outside the alphabet, in an otherwise valid file.
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        tensors = load_file(str(path))
        tensors["residues"][5] = 99
        save_file(tensors, str(path), metadata=meta)
    elif damage == "link":
        target = tmp_path_factory.mktemp("elsewhere") / "x.safetensors"
        target.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(target)
    else:
        path.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError) as error:
        read_index(folder)
    assert "\n" not in str(error.value) and str(path.name) in str(error.value)


def test_model_without_index_says_unknown(tmp_path, runner):
    model = launch.tiny_model_dir(tmp_path / "m")
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3, lengths=(30, 60))
    result = runner.invoke(cli, ["predict", str(fasta), "-m", str(model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert [r["domain"] for r in rows] == ["unknown"] * 3
    assert all(r["identity"] == "" and r["embedding_distance"] == "" for r in rows)


def test_train_stores_an_index_that_predict_reads(tmp_path, runner, small_dataset):
    out = tmp_path / "trained"
    result = runner.invoke(
        cli,
        ["train", "-b", "tiny", "-d", str(small_dataset), "--out", str(out), "--epochs", "1",
         "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    index = read_index(out)
    data = read_dataset(small_dataset).subset("train")
    assert index.ids == data.entries and index.thresholds is not None
    assert index.embeddings.shape[0] == len(data)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">copy\n{data.sequences[2]}\n")
    for method in ("kmer",) + (("mmseqs",) if mmseqs_available() else ()):
        runner_env = {"SYNNAV_DOMAIN_METHOD": method}
        result = runner.invoke(
            cli, ["predict", str(fasta), "-m", str(out), "--format", "jsonl"], env=runner_env
        )
        assert result.exit_code == 0, result.output
        row = json.loads(result.stdout.splitlines()[0])
        assert row["nearest_training"] == data.entries[2], method
        assert row["identity"] == 1.0 and row["coverage"] == 1.0
        assert row["domain"] == "in"
    result = runner.invoke(cli, ["predict", str(fasta), "-m", str(out), "--no-domain"])
    assert result.exit_code == 0, result.output
    assert not set(DOMAIN_COLUMNS) & set(result.stdout.splitlines()[0].split("\t"))


def test_the_default_search_is_kmers_whether_or_not_mmseqs_is_installed(monkeypatch, runner):
    # The same columns on every machine: MMseqs2 only when asked for.
    import synnav_cli.domain.assess as assess

    monkeypatch.delenv("SYNNAV_DOMAIN_METHOD", raising=False)
    monkeypatch.setattr(assess, "mmseqs_available", lambda: True)
    fasta = Path(__file__).parent.parent / "data" / "example.fasta"
    result = runner.invoke(cli, ["predict", str(fasta), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "training proteins by k-mer" in result.stderr


def _bundled_split(split: str):
    return read_dataset(bundled_dataset_path()).subset(split)


def _bundled_rows(tmp_path, runner) -> tuple[dict, list[int]]:
    if read_index(bundled_model_path()) is None:
        pytest.fail("the bundled model has no domain index: scripts/add_domain_index.py")
    train, test = _bundled_split("train"), _bundled_split("test")
    rng = np.random.default_rng(0)
    picks = [int(i) for i in rng.choice(len(test), size=20, replace=False)]
    records = [(f"train_{i}", train.sequences[i]) for i in (0, 100, 2000)]
    records += [(f"shuffled_{i}", "".join(rng.permutation(list(test.sequences[i])))) for i in picks]
    records += [(f"foreign_{k}", _random_protein(rng, 400)) for k in range(5)]
    # Random sequences that start, as real proteins do, with a methionine (see the xfail below).
    records += [(f"met_foreign_{k}", "M" + _random_protein(rng, 399)) for k in range(5)]
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    result = runner.invoke(cli, ["predict", str(fasta), "--device", "cpu", "--max-tokens", "16384"])
    assert result.exit_code == 0, result.output
    return {r["id"]: r for r in _rows(result.stdout)}, picks


@pytest.mark.slow
def test_bundled_model_calls_a_training_protein_in(tmp_path, runner):
    rows, _ = _bundled_rows(tmp_path, runner)
    train = _bundled_split("train")
    for i in (0, 100, 2000):
        row = rows[f"train_{i}"]
        assert (row["nearest_training"], row["identity"]) == (train.entries[i], "1.0000")
        assert row["domain"] == "in"


@pytest.mark.slow
def test_bundled_model_calls_shuffled_and_foreign_sequences_out(tmp_path, runner):
    # The embedding distance alone called them in (shuffled and random sequences lie closer to
    # training proteins in the bundled model's pooled space than real test proteins do); the
    # model's own implausibility score calls them out.
    rows, picks = _bundled_rows(tmp_path, runner)
    shuffled = [rows[f"shuffled_{i}"]["domain"] for i in picks]
    assert shuffled.count("out") >= 18, shuffled
    # The first letter decides (next test): every foreign sequence without a leading M is out.
    names = [f"foreign_{k}" for k in range(5)]
    plain = [n for n in names if not _sequence_of(tmp_path, n).startswith("M")]
    assert len(plain) >= 3, plain  # the check below is not empty
    assert [rows[n]["domain"] for n in plain] == ["out"] * len(plain)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="the bundled model's decoy score learned that a real protein starts with a methionine "
    "(its decoys were shuffled proteins, which seldom do): of 300 uniformly random sequences, "
    "95% were out and the other 5% were exactly those starting with M (docs/interpreting.md)",
)
def test_bundled_model_calls_foreign_sequences_starting_with_met_out(tmp_path, runner):
    rows, _ = _bundled_rows(tmp_path, runner)
    assert [rows[f"met_foreign_{k}"]["domain"] for k in range(5)] == ["out"] * 5


def _sequence_of(tmp_path, name: str) -> str:
    lines = (tmp_path / "q.fasta").read_text().splitlines()
    return lines[lines.index(f">{name}") + 1]


@pytest.mark.slow
@pytest.mark.skipif(not mmseqs_available(), reason="mmseqs is not installed")
def test_kmer_agrees_with_mmseqs_on_the_test_split(tmp_path):
    """On the bundled dataset's test split plus substituted copies of training proteins (the
    test split alone holds no close homologue of training), against its training split."""
    from synnav_cli.domain.mmseqs import MmseqsSearch

    train, test = _bundled_split("train"), _bundled_split("test")
    write_index(tmp_path / INDEX_FILE, train.entries, train.sequences, None, None)
    index = read_index(tmp_path)
    rng = np.random.default_rng(0)
    copies = [
        _mutant(rng, train.sequences[int(i)], float(rng.uniform(0.0, 0.5)))[0]
        for i in rng.choice(len(train), size=100, replace=False)
    ]
    queries = test.sequences + copies
    by_kmer = KmerSearch(index).nearest(queries)
    search = MmseqsSearch(index, threads=2)
    try:
        by_mmseqs = search.nearest(queries)
    finally:
        search.close()

    def close(n: Neighbour) -> bool:
        return n.index is not None and n.identity >= 0.5 and n.coverage >= 0.5

    agree = np.mean([close(a) == close(b) for a, b in zip(by_kmer, by_mmseqs)])
    assert agree >= 0.97, agree
    both = [(a, b) for a, b in zip(by_kmer, by_mmseqs) if close(a) and close(b)]
    assert len(both) >= 90
    assert np.mean([a.index == b.index for a, b in both]) >= 0.95
    assert np.mean([abs(a.identity - b.identity) <= 0.1 for a, b in both]) >= 0.9
