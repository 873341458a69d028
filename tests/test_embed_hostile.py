"""Embedding files from others (docs/safety.md): ``merge`` parts that are crafted, linked or lie
about their sizes, and ``embed`` resume state (``FILE.partial/``) whose chunks or manifest do not
fit the run. A part is one line naming it; a chunk that does not fit is embedded again."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import launch
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.predict import embed as embed_module
from synnav_cli.predict.embed_read import read_embeddings
from synnav_cli.predict.resumable import input_digest

RECORDS, DIM = 6, 8


@pytest.fixture
def fasta(tmp_path) -> Path:
    return launch.write_fasta(tmp_path / "in.fasta", RECORDS, lengths=(5, 12))


def genuine(fasta: Path, shard: int) -> tuple[dict, dict]:
    """The arrays and metadata of ``--shard shard/2`` of ``fasta``, as synnav embed writes them."""
    from synnav_cli.data.fasta import read_fasta

    records = list(read_fasta(str(fasta)))[shard - 1 :: 2]
    rng = np.random.default_rng(shard)
    lengths = np.array([len(r.sequence) for r in records], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = {
        "ids": np.array([r.id for r in records]),
        "lengths": lengths,
        "embeddings": rng.random((len(records), DIM), dtype=np.float32),
        "offsets": offsets,
        "residue_embeddings": rng.random((int(offsets[-1]), DIM), dtype=np.float32),
    }
    meta = {"format": "synnav-embeddings", "backbone": "tiny", "model": None, "per_residue": True,
            "dtype": "float32", "shard": f"{shard}/2", "input_sha256": input_digest(str(fasta))[0],
            "input_records": RECORDS, "proteins": len(records), "residues": int(offsets[-1])}
    return arrays, meta


def write_npz(path: Path, arrays: dict, meta) -> Path:
    np.savez(path, metadata=np.array(json.dumps(meta)), **arrays)
    return path


def write_h5(path: Path, arrays: dict, meta) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["metadata"] = json.dumps(meta)
        for name, value in arrays.items():
            if name == "ids" and value.dtype.kind == "U":
                f.create_dataset(name, data=value.tolist(), dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=value)
    return path


def write_parquet(path: Path, arrays: dict, meta, columns: dict | None = None) -> Path:
    """Rows as synnav writes them; ``columns`` replaces or adds columns (arrow arrays)."""
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(arrays["embeddings"].reshape(-1)), DIM)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(arrays["residue_embeddings"].reshape(-1)), DIM)
    residues = pa.ListArray.from_arrays(pa.array(arrays["offsets"].astype(np.int32)), inner)
    table = {"id": pa.array(arrays["ids"].tolist(), pa.string()), "length": pa.array(arrays["lengths"]),
             "embedding": embedding, "residue_embeddings": residues, **(columns or {})}
    schema_meta = {"synnav": json.dumps(meta)}
    pq.write_table(pa.table(table).replace_schema_metadata(schema_meta), path)
    return path


def merge(runner, parts, out, *extra):
    return runner.invoke(cli, ["merge", *map(str, parts), "--out", str(out), *extra])


def test_genuine_parts_merge_in_every_format(runner, tmp_path, fasta):
    """The builders below make what synnav writes: only their changes are refused."""
    for suffix, write in ((".npz", write_npz), (".h5", write_h5), (".parquet", write_parquet)):
        parts = [write(tmp_path / f"part{i}{suffix}", *genuine(fasta, i)) for i in (1, 2)]
        out = tmp_path / f"all{suffix}"
        result = merge(runner, parts, out, "--fasta", str(fasta))
        assert result.exit_code == 0, result.output
        assert read_embeddings(out)["ids"].tolist() == [f"p{i}" for i in range(RECORDS)]


# --- H2: an .h5 part is read only from its own datasets ---


def _external_storage(path: Path, arrays: dict, meta: dict) -> None:
    secret = path.parent / "secret.bin"
    secret.write_bytes(np.full((3, DIM), 7.0, np.float32).tobytes())  # another local file
    write_h5(path, {k: v for k, v in arrays.items() if k != "embeddings"}, meta)
    with h5py.File(path, "a") as f:
        f.create_dataset("embeddings", (3, DIM), np.float32, external=[(str(secret), 0, 3 * DIM * 4)])


def _elsewhere(path: Path, arrays: dict) -> Path:
    other = path.parent / "elsewhere.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("embeddings", data=np.full_like(arrays["embeddings"], 7.0))
    return other


def _external_link(path: Path, arrays: dict, meta: dict) -> None:
    other = _elsewhere(path, arrays)
    write_h5(path, {k: v for k, v in arrays.items() if k != "embeddings"}, meta)
    with h5py.File(path, "a") as f:
        f["embeddings"] = h5py.ExternalLink(str(other), "/embeddings")


def _soft_link(path: Path, arrays: dict, meta: dict) -> None:
    write_h5(path, {k: v for k, v in arrays.items() if k != "embeddings"}, meta)
    with h5py.File(path, "a") as f:
        f.create_dataset("hidden", data=np.full_like(arrays["embeddings"], 7.0))
        f["embeddings"] = h5py.SoftLink("/hidden")


def _virtual(path: Path, arrays: dict, meta: dict) -> None:
    other = _elsewhere(path, arrays)
    write_h5(path, {k: v for k, v in arrays.items() if k != "embeddings"}, meta)
    layout = h5py.VirtualLayout(shape=arrays["embeddings"].shape, dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(other), "embeddings", shape=arrays["embeddings"].shape)
    with h5py.File(path, "a") as f:
        f.create_virtual_dataset("embeddings", layout)


@pytest.mark.parametrize("build", [_external_storage, _external_link, _soft_link, _virtual],
                         ids=["external-storage", "external-link", "soft-link", "virtual"])
def test_merge_reads_nothing_outside_an_h5_part(runner, tmp_path, fasta, build):
    first = write_h5(tmp_path / "part1.h5", *genuine(fasta, 1))
    part = tmp_path / "part2.h5"
    build(part, *genuine(fasta, 2))
    out = tmp_path / "all.npz"
    one_error_line(merge(runner, [first, part], out), str(part))
    assert not out.exists()


# --- M2, L1: crafted parts are one line naming the part ---


def _npz(change):
    def build(path: Path, arrays: dict, meta: dict) -> Path:
        return write_npz(path.with_suffix(".npz"), *change(arrays, meta))
    return build


def _h5(change):
    def build(path: Path, arrays: dict, meta: dict) -> Path:
        return write_h5(path.with_suffix(".h5"), *change(arrays, meta))
    return build


def _parquet(columns):
    def build(path: Path, arrays: dict, meta: dict) -> Path:
        return write_parquet(path.with_suffix(".parquet"), arrays, meta, columns(arrays))
    return build


def _npz_huge_header(path: Path, arrays: dict, meta: dict) -> Path:
    """ids' header declares 10^11 proteins; the member holds three."""
    path = write_npz(path.with_suffix(".npz"), arrays, meta)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    ids, header = arrays["ids"], io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(ids.dtype), "fortran_order": False, "shape": (10**11,)})
    members["ids.npy"] = header.getvalue() + ids.tobytes()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _deep_npz(path: Path, arrays: dict, meta: dict) -> Path:
    path = path.with_suffix(".npz")
    np.savez(path, metadata=np.array("[" * 200_000 + "]" * 200_000), **arrays)
    return path


def _group_ids(path: Path, arrays: dict, meta: dict) -> Path:
    path = write_h5(path.with_suffix(".h5"), {k: v for k, v in arrays.items() if k != "ids"}, meta)
    with h5py.File(path, "a") as f:
        f.create_group("ids")
    return path


def _with(name, value):
    def change(arrays, meta):
        return {**arrays, name: value(arrays)}, meta
    return change


def _both(build):
    """Both parts crafted alike, so that they agree with each other."""
    build.both = True
    return build


def _fixed(values, kind):
    return pa.FixedSizeListArray.from_arrays(pa.array(values, kind), DIM)


CRAFTED = {
    "npz-header-1e11": _npz_huge_header,
    "npz-deep-metadata": _deep_npz,
    "npz-1d-embeddings": _npz(_with("embeddings", lambda a: a["embeddings"].reshape(-1))),
    "npz-3d-embeddings": _npz(_with("embeddings", lambda a: a["embeddings"][:, :, None])),
    "npz-short-lengths": _npz(_with("lengths", lambda a: a["lengths"][:-1])),
    "npz-int-ids": _npz(_with("ids", lambda a: np.arange(len(a["ids"])))),
    "npz-shifted-offsets": _npz(_with("offsets", lambda a: a["offsets"] + 1)),
    "npz-float64": _both(_npz(_with("embeddings", lambda a: a["embeddings"].astype(np.float64)))),
    "h5-int-ids": _h5(_with("ids", lambda a: np.arange(len(a["ids"])))),
    "h5-group-ids": _group_ids,
    "h5-3d-embeddings": _h5(_with("embeddings", lambda a: a["embeddings"][:, :, None])),
    "h5-short-lengths": _h5(_with("lengths", lambda a: a["lengths"][:-1])),
    "h5-short-residues": _h5(_with("residue_embeddings", lambda a: a["residue_embeddings"][:-3])),
    "parquet-list-float": _parquet(lambda a: {"embedding": pa.array(a["embeddings"].tolist())}),
    "parquet-int-embeddings": _both(_parquet(lambda a: {
        "embedding": _fixed(np.zeros(a["embeddings"].size, np.int32), pa.int32())})),
    "parquet-string-lengths": _parquet(lambda a: {"length": pa.array([str(n) for n in a["lengths"]])}),
    "parquet-null-row": _parquet(lambda a: {"embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(a["embeddings"].reshape(-1)), DIM, mask=pa.array([False, True, False]))}),
    "parquet-null-id": _parquet(lambda a: {"id": pa.array(["p1", None, "p5"], pa.string())}),
    # Vectors wider than any model's (2^25 values a row would be 128 MB a protein).
    "parquet-2^17-wide": _both(_parquet(lambda a: {"embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(3 << 17, np.float32)), 1 << 17)})),
}


@pytest.mark.parametrize("build", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_parts_are_one_line(runner, tmp_path, fasta, build):
    first = (build if getattr(build, "both", False) else _npz(lambda *a: a))
    parts = [first(tmp_path / "part1", *genuine(fasta, 1)), build(tmp_path / "part2", *genuine(fasta, 2))]
    out = tmp_path / "all.h5"
    line = one_error_line(merge(runner, parts, out))
    assert any(f"Error: {part}" in line for part in parts) and len(line) < 400, line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".all", "all"))) == []


# --- M3: sizes a part declares are checked against what it stores; no temporary file is left ---


def _billion(path: Path, shard: int, meta: dict) -> Path:
    """A few KB declaring a billion proteins: datasets HDF5 never allocated (they read as 0)."""
    count = 10**9
    with h5py.File(path, "w") as f:
        f.attrs["metadata"] = json.dumps({**meta, "shard": f"{shard}/2", "input_records": 2 * count,
                                          "per_residue": False, "proteins": count, "residues": None})
        f.create_dataset("ids", (count,), dtype=h5py.string_dtype())
        f.create_dataset("lengths", (count,), dtype=np.int64)
        f.create_dataset("embeddings", (count, DIM), dtype=np.float32)
    return path


def test_parts_declaring_a_billion_proteins_are_refused_at_once(runner, tmp_path, fasta):
    meta = genuine(fasta, 1)[1]
    parts = [_billion(tmp_path / f"part{i}.h5", i, meta) for i in (1, 2)]
    assert all(part.stat().st_size < 20_000 for part in parts)
    out = tmp_path / "all.h5"
    args = [sys.executable, "-m", "synnav_cli", "merge", *map(str, parts), "--out", str(out)]
    # A subprocess with a deadline: before the fix it ran for minutes, its memory growing.
    done = subprocess.run(args, env=launch.environment(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"Error: {parts[0]}") and len(done.stderr.splitlines()) == 1
    one_error_line(merge(runner, parts, out, "--fasta", str(fasta)), str(parts[0]), "stores 0")
    assert sorted(p.name for p in tmp_path.iterdir() if "all" in p.name) == []


SLOWED = {  # the final file's temporary sibling exists while write_embeddings sleeps
    "merge": launch.slowed_cli("synnav_cli.predict.embed_merge", "write_embeddings", 1, 120),
    "embed": launch.slowed_cli("synnav_cli.predict.embed", "write_embeddings", 4, 120),
}


@pytest.mark.parametrize("command", SLOWED)
def test_sigterm_leaves_no_temporary_file(tmp_path, fasta, command):
    parts = [write_npz(tmp_path / f"part{i}.npz", *genuine(fasta, i)) for i in (1, 2)]
    out = tmp_path / "all.npz"
    args = (["merge", *map(str, parts)] if command == "merge"
            else ["embed", str(fasta), "-b", "tiny", "--device", "cpu"])
    process = subprocess.Popen([sys.executable, "-c", SLOWED[command], *args, "--out", str(out)],
                               env=launch.environment(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".all.npz*")) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        assert list(tmp_path.glob(".all.npz*"))  # the temporary file is there
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert [p.name for p in tmp_path.glob("*all.npz*")] == (["all.npz.partial"] if command == "embed" else [])


# --- H1, M2: embed's resume state is checked against the input and the options ---

REAL_EMBED = embed_module.embed_sequences


class Stop(Exception):
    pass


def _chunks_of_four(monkeypatch, calls: int) -> None:
    """Chunks of 4 proteins; the run stops (as a kill would) once ``calls`` chunks are done."""
    monkeypatch.setattr(embed_module, "CHUNK_RECORDS_PER_RESIDUE", 4)
    done = []

    def counted(*args, **kwargs):
        if len(done) == calls:
            raise Stop
        done.append(1)
        return REAL_EMBED(*args, **kwargs)

    monkeypatch.setattr(embed_module, "embed_sequences", counted)


@pytest.fixture
def interrupted(runner, tmp_path, monkeypatch):
    """10 proteins in chunks of 4, stopped after two: (command, --out, its partial folder, the
    file an uninterrupted run writes)."""
    ten = launch.write_fasta(tmp_path / "ten.fasta", 10, lengths=(20, 600))
    args = ["embed", str(ten), "-b", "tiny", "--device", "cpu", "--per-residue", "--out"]
    _chunks_of_four(monkeypatch, 10**6)
    assert runner.invoke(cli, [*args, str(tmp_path / "whole.npz")]).exit_code == 0
    out = tmp_path / "e.npz"
    _chunks_of_four(monkeypatch, 2)
    assert isinstance(runner.invoke(cli, [*args, str(out)]).exception, Stop)
    _chunks_of_four(monkeypatch, 10**6)
    return [*args, str(out)], out, tmp_path / "e.npz.partial", read_embeddings(tmp_path / "whole.npz")


def _chunk(partial: Path, number: int, change) -> None:
    path = partial / f"chunk-{number:06d}.npz"
    with np.load(path) as saved:
        arrays = dict(saved)
    np.savez(path, **change(arrays))


def _manifest(partial: Path, change) -> None:
    path = partial / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _drop_last(arrays):
    cut = arrays["offsets"][-2]
    return {**arrays, "ids": arrays["ids"][:-1], "lengths": arrays["lengths"][:-1],
            "embeddings": arrays["embeddings"][:-1], "offsets": arrays["offsets"][:-1],
            "residue_embeddings": arrays["residue_embeddings"][:cut]}


def _more_chunks(partial: Path) -> None:
    """Four chunks of four for ten proteins (the 6,144 rows for 6,000 records of the report)."""
    for number in (2, 3):
        (partial / f"chunk-{number:06d}.npz").write_bytes((partial / "chunk-000001.npz").read_bytes())
    _manifest(partial, lambda m: {**m, "chunks": m["chunks"] + m["chunks"]})


def _shifted(a):
    offsets = a["offsets"].copy()
    offsets[1] += 1  # the first protein's last residue becomes the second's
    return {**a, "offsets": offsets}


CHUNKS = {
    "width": lambda p: _chunk(p, 1, lambda a: {**a, "embeddings": a["embeddings"][:, :8]}),
    "rank": lambda p: _chunk(p, 1, lambda a: {**a, "embeddings": a["embeddings"][:, :, None]}),
    "dtype": lambda p: _chunk(p, 1, lambda a: {**a, "embeddings": a["embeddings"].astype(np.float64)}),
    "residue-dtype": lambda p: _chunk(p, 1, lambda a: {
        **a, "residue_embeddings": a["residue_embeddings"].astype(np.float16)}),
    "ids-not-in-input": lambda p: _chunk(p, 1, lambda a: {**a, "ids": np.array(["x4", "x5", "x6", "x7"])}),
    "chunk-0-again": lambda p: (p / "chunk-000001.npz").write_bytes((p / "chunk-000000.npz").read_bytes()),
    "lengths": lambda p: _chunk(p, 1, lambda a: {**a, "lengths": a["lengths"] + 1}),
    "shifted-offsets": lambda p: _chunk(p, 1, _shifted),
    "fewer-than-listed": lambda p: _chunk(p, 1, _drop_last),
    "no-residues": lambda p: _chunk(p, 1, lambda a: {k: v for k, v in a.items() if "residue" not in k
                                                     and k != "offsets"}),
    "more-chunks-than-input": _more_chunks,
}


@pytest.mark.parametrize("tamper", CHUNKS.values(), ids=CHUNKS.keys())
def test_resume_embeds_again_a_chunk_that_does_not_fit(runner, interrupted, tamper):
    args, out, partial, expected = interrupted
    tamper(partial)
    number = 2 if tamper is _more_chunks else 1
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and f"chunk-{number:06d}.npz" in warnings[0], result.output
    assert f"Resuming {out}: {4 * number} proteins already done" in result.output
    got = read_embeddings(out)
    for key in ("ids", "lengths", "embeddings", "offsets", "residue_embeddings"):
        assert got[key].dtype == expected[key].dtype and np.array_equal(got[key], expected[key]), key
    assert not partial.exists()


MANIFESTS = {
    "200k-deep": lambda p: (p / "manifest.json").write_text("[" * 200_000 + "]" * 200_000),
    "not-an-object": lambda p: (p / "manifest.json").write_text("[]"),
    "negative": lambda p: _manifest(p, lambda m: {**m, "chunks": [[-4, None]]}),
    "huge": lambda p: _manifest(p, lambda m: {**m, "chunks": [[10**30, None]]}),
    "chunks-an-object": lambda p: _manifest(p, lambda m: {**m, "chunks": {"ab": 1}}),
    "text-sizes": lambda p: _manifest(p, lambda m: {**m, "chunks": [["4", "x"]]}),
    "flat-list": lambda p: _manifest(p, lambda m: {**m, "chunks": [4, 4]}),
    "binary": lambda p: (p / "manifest.json").write_bytes(os.urandom(64)),
}


@pytest.mark.parametrize("damage", MANIFESTS.values(), ids=MANIFESTS.keys())
def test_a_damaged_manifest_starts_over_in_one_line(runner, interrupted, damage):
    args, out, partial, expected = interrupted
    damage(partial)
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and "from scratch" in warnings[0], result.output
    assert "Traceback" not in result.output
    got = read_embeddings(out)
    assert np.array_equal(got["embeddings"], expected["embeddings"]) and not partial.exists()
