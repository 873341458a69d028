"""synnav embed at scale: every format holds the .npz's numbers, --shard parts merge back to the
whole, an interrupted run resumes to the uninterrupted file, and what does not fit is refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import h5py
import launch
import numpy as np
import pyarrow.parquet as pq
import pytest
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.files import exclusive_lock
from synnav_cli.predict import embed as embed_module
from synnav_cli.predict.embed_read import read_embeddings

REAL_EMBED = embed_module.embed_sequences
KEYS = ("ids", "lengths", "embeddings", "offsets", "residue_embeddings")


def _embed(runner, fasta, out, *extra):
    result = runner.invoke(cli, ["embed", str(fasta), "-b", "tiny", "--out", str(out), "--device", "cpu",
                                 *extra])
    assert result.exit_code == 0, result.output
    return out


def _same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert [k for k in KEYS if k in a] == [k for k in KEYS if k in b]
    for key in KEYS:
        if key in a:
            assert a[key].shape == b[key].shape, key
            assert a[key].dtype == b[key].dtype, key
            if a[key].dtype.kind in "fc":
                np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)
            else:
                assert a[key].tolist() == b[key].tolist(), key


@pytest.fixture
def fasta(tmp_path):
    # 25 proteins, some over the tiny backbone's 512 residues (cut, with their full length kept).
    return launch.write_fasta(tmp_path / "in.fasta", 25, lengths=(20, 600))


@pytest.mark.parametrize("options", [(), ("--per-residue", "--float16")], ids=["pooled", "residues-fp16"])
def test_every_format_holds_the_npz_numbers(runner, tmp_path, fasta, options):
    npz = np.load(_embed(runner, fasta, tmp_path / "e.npz", *options))
    reference = {k: npz[k] for k in KEYS if k in npz.files}
    assert (reference["embeddings"].dtype == np.float16) == ("--float16" in options)
    meta = json.loads(str(npz["metadata"]))
    assert meta["backbone"] == "tiny" and meta["shard"] is None and len(meta["input_sha256"]) == 64

    for suffix in (".h5", ".hdf5"):
        with h5py.File(_embed(runner, fasta, tmp_path / f"e{suffix}", *options)) as f:
            native = {k: f[k][:] for k in KEYS if k in f}
            native["ids"] = f["ids"].asstr()[:].astype(str)
            assert json.loads(f.attrs["metadata"])["input_sha256"] == meta["input_sha256"]
        _same(reference, native)

    table = pq.read_table(_embed(runner, fasta, tmp_path / "e.parquet", *options))
    assert table.column_names[:3] == ["id", "length", "embedding"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == reference["ids"].tolist()
    assert [r["length"] for r in rows] == reference["lengths"].tolist()
    dtype = reference["embeddings"].dtype
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], dtype=dtype), reference["embeddings"])
    if "--per-residue" in options:
        flat = np.concatenate([np.array(r["residue_embeddings"], dtype=dtype) for r in rows])
        np.testing.assert_array_equal(flat, reference["residue_embeddings"])
    # And read back through synnav (as merge does), every format gives the same arrays.
    for name in ("e.npz", "e.h5", "e.parquet"):
        _same(reference, read_embeddings(tmp_path / name))


def test_unknown_suffix_and_missing_extras_are_one_line(runner, tmp_path, fasta, monkeypatch):
    line = one_error_line(runner.invoke(cli, ["embed", str(fasta), "-b", "tiny", "--out", str(tmp_path / "e.txt")]),
                          ".npz", ".h5", ".parquet")
    assert "'.txt'" in line
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    one_error_line(runner.invoke(cli, ["embed", str(fasta), "-b", "tiny", "--out", str(tmp_path / "e.h5")]),
                   'pip install ".[hdf5]"` in the synnav repository', 'pip install "h5py>=3.8"')
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    one_error_line(runner.invoke(cli, ["embed", str(fasta), "-b", "tiny", "--out", str(tmp_path / "e.parquet")]),
                   'pip install ".[parquet]"`', 'pip install "pyarrow>=15"')
    assert not any(p.name.startswith("e.") for p in tmp_path.iterdir())


@pytest.mark.parametrize("merged", ["all.npz", "all.parquet"])
def test_shards_merge_to_the_unsharded_file(runner, tmp_path, fasta, merged):
    whole = read_embeddings(_embed(runner, fasta, tmp_path / "whole.npz", "--per-residue"))
    # Parts in mixed formats: merge reads each by its suffix and writes --out's.
    parts = [_embed(runner, fasta, tmp_path / f"part-{i}{suffix}", "--per-residue", "--shard", f"{i}/3")
             for i, suffix in zip((1, 2, 3), (".npz", ".h5", ".parquet"))]
    assert read_embeddings(parts[1])["ids"].tolist() == whole["ids"][1::3].tolist()
    assert read_embeddings(parts[1])["metadata"]["shard"] == "2/3"
    out = tmp_path / merged
    result = runner.invoke(cli, ["merge", *map(str, parts), "--fasta", str(fasta), "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = read_embeddings(out)
    # Other batch neighbours, other padding: equal up to float rounding.
    _same(whole, got, atol=1e-5)
    assert got["metadata"]["shard"] is None
    assert got["metadata"]["input_sha256"] == whole["metadata"]["input_sha256"]


def test_merge_refuses_parts_that_do_not_fit(runner, tmp_path, fasta):
    parts = [_embed(runner, fasta, tmp_path / f"part-{i}.npz", "--shard", f"{i}/2") for i in (1, 2)]
    other = launch.write_fasta(tmp_path / "other.fasta", 25, lengths=(20, 60), seed=5)
    stranger = _embed(runner, other, tmp_path / "stranger.npz", "--shard", "2/2")
    whole = _embed(runner, fasta, tmp_path / "whole.npz")
    fp16 = _embed(runner, fasta, tmp_path / "fp16.npz", "--shard", "2/2", "--float16")
    out = str(tmp_path / "all.npz")

    def merge(*args):
        return runner.invoke(cli, ["merge", *map(str, args), "--out", out])

    one_error_line(merge(parts[0], stranger), "another input")
    line = one_error_line(merge(parts[1], parts[0]), "is shard 2/2 but is given as part 1")
    assert line.startswith(f"Error: {parts[1]} is shard")  # named once, not prefixed by another part
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(parts[1].read_bytes()[:300])
    one_error_line(merge(parts[0], damaged), str(damaged), "not an embedding file synnav can read")
    one_error_line(merge(parts[0]), "is shard 1/2 but is given as part 1 of 1")
    one_error_line(merge(whole, parts[1]), "without --shard")
    one_error_line(merge(parts[0], fp16), "dtype differs")
    one_error_line(merge(*parts, "--fasta", other), "another input than")
    one_error_line(runner.invoke(cli, ["merge", *map(str, parts)]), "--out")
    assert not (tmp_path / "all.npz").exists()


class Stop(Exception):
    pass


def _interrupt_after(monkeypatch, calls: int) -> list[int]:
    """Chunks of 4 proteins, and the run stops (as a kill would) once ``calls`` chunks are done.

    Returns the list the number of proteins of each embedding call goes to.
    """
    monkeypatch.setattr(embed_module, "CHUNK_RECORDS", 4)
    monkeypatch.setattr(embed_module, "CHUNK_RECORDS_PER_RESIDUE", 4)
    sizes: list[int] = []

    def counted(encoder, backbone, sequences, *args, **kwargs):
        if len(sizes) == calls:
            raise Stop
        sizes.append(len(sequences))
        return REAL_EMBED(encoder, backbone, sequences, *args, **kwargs)

    monkeypatch.setattr(embed_module, "embed_sequences", counted)
    return sizes


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_file(runner, tmp_path, fasta, monkeypatch, suffix):
    options = ("--per-residue", "--float16")
    _interrupt_after(monkeypatch, 10**6)
    expected = read_embeddings(_embed(runner, fasta, tmp_path / f"whole{suffix}", *options))

    out = tmp_path / f"e{suffix}"
    sizes = _interrupt_after(monkeypatch, 3)
    args = ["embed", str(fasta), "-b", "tiny", "--out", str(out), "--device", "cpu", *options]
    stopped = runner.invoke(cli, args)
    assert isinstance(stopped.exception, Stop) and sizes == [4, 4, 4]
    partial = tmp_path / f"e{suffix}.partial"
    assert not out.exists()
    assert json.loads((partial / "manifest.json").read_text())["chunks"][2][0] == 4
    with np.load(partial / "chunk-000000.npz", allow_pickle=False) as chunk:  # plain arrays
        assert chunk["ids"].tolist() == ["p0", "p1", "p2", "p3"]

    sizes = _interrupt_after(monkeypatch, 10**6)
    resumed = runner.invoke(cli, args)
    assert resumed.exit_code == 0, resumed.output
    assert "12 proteins already done" in resumed.output
    assert sum(sizes) == 25 - 12  # only the rest was embedded
    got = read_embeddings(out)
    _same(expected, got)  # bit for bit
    assert not partial.exists() and not (tmp_path / f"e{suffix}.lock").exists()


SLOW_EMBED = launch.slowed_cli("synnav_cli.predict.embed", "embed_sequences", 4, 0.4)


def test_a_killed_run_resumes_to_the_uninterrupted_file(runner, tmp_path, fasta, monkeypatch):
    """SIGKILL, not an exception: nothing of the dying run's own clean-up happens."""
    _interrupt_after(monkeypatch, 10**6)
    expected = read_embeddings(_embed(runner, fasta, tmp_path / "whole.h5"))
    out = tmp_path / "e.h5"
    args = ["embed", str(fasta), "-b", "tiny", "--out", str(out), "--device", "cpu", "-q"]
    process = subprocess.Popen([sys.executable, "-c", SLOW_EMBED, *args], env=launch.environment(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "e.h5.partial" / "manifest.json"
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if manifest.exists() and len(json.loads(manifest.read_text())["chunks"]) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read()  # still running: killed mid-way
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not out.exists()
    done = sum(size for size, _ in json.loads(manifest.read_text())["chunks"])
    assert 8 <= done < 25

    resumed = runner.invoke(cli, args[:-1])  # the same command (not quiet: it says what it skips)
    assert resumed.exit_code == 0, resumed.output
    assert f"{done} proteins already done" in resumed.output
    _same(expected, read_embeddings(out))
    assert not manifest.parent.exists()


def test_resume_refuses_another_input_or_other_options(runner, tmp_path, fasta, monkeypatch):
    out = tmp_path / "e.npz"
    _interrupt_after(monkeypatch, 2)
    args = ["embed", str(fasta), "-b", "tiny", "--out", str(out), "--device", "cpu"]
    assert isinstance(runner.invoke(cli, args).exception, Stop)
    _interrupt_after(monkeypatch, 10**6)
    one_error_line(runner.invoke(cli, [*args, "--float16"]), "other options", "delete", "e.npz.partial")
    fasta.write_text(fasta.read_text().replace(">p1\n", ">p1\nW"))  # one more residue in p1
    one_error_line(runner.invoke(cli, args), "another input", "delete", "e.npz.partial")
    assert not out.exists() and (tmp_path / "e.npz.partial" / "chunk-000001.npz").exists()


def test_one_writer_and_no_links(runner, tmp_path, fasta):
    out = tmp_path / "e.npz"
    args = ["embed", str(fasta), "-b", "tiny", "--out", str(out)]
    with exclusive_lock(tmp_path / "e.npz.lock", str(out)):
        one_error_line(runner.invoke(cli, args), "another synnav run is writing")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "e.npz.partial").symlink_to(elsewhere)
    one_error_line(runner.invoke(cli, args), "symbolic link")
    assert list(elsewhere.iterdir()) == [] and not out.exists()
