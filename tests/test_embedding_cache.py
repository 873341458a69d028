from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tiny_backbone import TinyBackbone

from synnav_cli.model import LocalizationModel
from synnav_cli.scoring.score import Runtime
from synnav_cli.train import embedding_cache
from synnav_cli.train.embedding_cache import EmbeddingCache, cache_key, pooled_embeddings

SEQUENCES = ["MKTAYIAKQR", "ACDEFGHIKLMNPQRSTVWY" * 3, "MK", "PEPTIDE" * 9, "MKTAYIAKQR", "W" * 40]


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and counts the proteins it is asked to embed."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.proteins = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        self.proteins += input_ids.shape[0]
        return self.inner(input_ids, attention_mask)


def make_model(backbone: TinyBackbone) -> LocalizationModel:
    encoder = CountingEncoder(backbone.build_encoder(pretrained=True))
    return LocalizationModel(encoder, backbone.embedding_dim, num_labels=3)


def runtime(max_tokens: int = 128) -> Runtime:
    return Runtime(torch.device("cpu"), "fp32", max_tokens)


def direct(model: LocalizationModel, backbone: TinyBackbone, sequences: list[str]) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return np.stack([model.embed(backbone.tokenize([s]))[0].numpy() for s in sequences])


class OtherWeights(TinyBackbone):
    def fingerprint(self) -> str:
        return "tiny@other-weights"


def test_root_is_inside_the_synnav_cache(tmp_path):
    assert EmbeddingCache().root == tmp_path / "cache" / "embeddings"


def test_second_call_computes_nothing_and_matches_direct_computation():
    backbone = TinyBackbone()
    model = make_model(backbone)
    cache = EmbeddingCache()
    first = pooled_embeddings(model, backbone, SEQUENCES, runtime(), cache)
    unique = len(set(SEQUENCES))
    assert model.encoder.proteins == unique  # the repeated sequence is embedded once
    assert cache.count() == unique

    before = model.encoder.calls
    second = pooled_embeddings(model, backbone, SEQUENCES, runtime(), cache)
    assert model.encoder.calls == before
    np.testing.assert_array_equal(first, second)

    expected = direct(model, backbone, SEQUENCES)
    assert first.dtype == np.float32 and first.shape == (len(SEQUENCES), backbone.embedding_dim)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)


def test_only_missing_proteins_are_computed():
    backbone = TinyBackbone()
    model = make_model(backbone)
    cache = EmbeddingCache()
    pooled_embeddings(model, backbone, SEQUENCES[:2], runtime(), cache)
    model.encoder.proteins = 0
    result = pooled_embeddings(model, backbone, ["NEWPROTEIN", *SEQUENCES[:2]], runtime(), cache)
    assert model.encoder.proteins == 1
    np.testing.assert_allclose(result, direct(model, backbone, ["NEWPROTEIN", *SEQUENCES[:2]]),
                               rtol=1e-5, atol=1e-6)


def test_fully_cached_run_never_builds_the_model():
    backbone = TinyBackbone()
    cache = EmbeddingCache()
    built = []

    def build():
        built.append(1)
        return make_model(backbone)

    first = pooled_embeddings(build, backbone, SEQUENCES, runtime(), cache)
    second = pooled_embeddings(build, backbone, SEQUENCES, runtime(), cache)
    assert len(built) == 1
    np.testing.assert_array_equal(first, second)


def test_different_fingerprint_or_precision_misses():
    backbone, other = TinyBackbone(), OtherWeights()
    cache = EmbeddingCache()
    pooled_embeddings(make_model(backbone), backbone, SEQUENCES, runtime(), cache)

    found, missing = cache.get_many(cache_key(other, "fp32"), SEQUENCES)
    assert found == {} and missing == list(range(len(SEQUENCES)))
    found, missing = cache.get_many(cache_key(backbone, "bf16"), SEQUENCES)
    assert found == {}

    model = make_model(other)
    pooled_embeddings(model, other, SEQUENCES, runtime(), cache)
    assert model.encoder.proteins == len(set(SEQUENCES))


def test_model_mode_is_restored():
    backbone = TinyBackbone()
    model = make_model(backbone)
    model.train()
    pooled_embeddings(model, backbone, SEQUENCES, runtime(), EmbeddingCache())
    assert model.training


def test_put_get_round_trip_and_rejects_bad_shapes(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    vectors = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    cache.put_many("k", ["A", "B", "C"], vectors)
    found, missing = cache.get_many("k", ["C", "X", "A"])
    assert missing == [1]
    np.testing.assert_array_equal(found[0], vectors[2])
    np.testing.assert_array_equal(found[2], vectors[0])
    with pytest.raises(ValueError):
        cache.put_many("k", ["A", "B"], vectors)


def test_error_mid_write_rolls_back(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    cache.put_many("k", ["A"], np.ones((1, 4), np.float32))

    vectors = np.ones((3, 4), np.float32)
    original = embedding_cache.sequence_digest
    seen = []

    def failing_digest(sequence):
        seen.append(sequence)
        if len(seen) == 3:  # the third row of the transaction
            raise RuntimeError("disk went away")
        return original(sequence)

    embedding_cache.sequence_digest = failing_digest
    try:
        with pytest.raises(RuntimeError):
            cache.put_many("k", ["B", "C", "D"], vectors)
    finally:
        embedding_cache.sequence_digest = original
    assert cache.count() == 1
    found, missing = cache.get_many("k", ["A", "B", "C"])
    assert list(found) == [0] and missing == [1, 2]


def test_process_killed_mid_write_leaves_a_readable_cache(tmp_path):
    root = tmp_path / "c"
    cache = EmbeddingCache(root)
    cache.put_many("k", ["A"], np.full((1, 8), 2.0, np.float32))
    cache.close()
    # A child opens a write transaction, inserts thousands of rows, and dies before committing.
    child = textwrap.dedent(
        f"""
        import os, numpy as np
        from synnav_cli.train.embedding_cache import EmbeddingCache, sequence_digest
        cache = EmbeddingCache({str(root)!r})
        conn = cache._connect()
        conn.execute("BEGIN IMMEDIATE")
        blob = np.zeros(8, '<f4').tobytes()
        conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                         (("k", sequence_digest(f"S{{i}}"), 8, blob) for i in range(5000)))
        os._exit(9)
        """
    )
    done = subprocess.run([sys.executable, "-c", child])
    assert done.returncode == 9
    cache = EmbeddingCache(root)
    found, missing = cache.get_many("k", ["A", "S1", "S4999"])
    assert missing == [1, 2]
    np.testing.assert_array_equal(found[0], np.full(8, 2.0, np.float32))
    cache.put_many("k", ["S1"], np.ones((1, 8), np.float32))  # and it is still writable
    assert cache.count("k") == 2


def test_damaged_file_is_set_aside(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / embedding_cache.DB_FILE).write_bytes(b"this is not a database" * 100)
    cache = EmbeddingCache(root)
    found, missing = cache.get_many("k", ["A"])
    assert missing == [0]
    cache.put_many("k", ["A"], np.ones((1, 2), np.float32))
    assert cache.count() == 1
    assert any(p.name.startswith(embedding_cache.DB_FILE + ".damaged-") for p in root.iterdir())
