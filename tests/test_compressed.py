"""Compressed input: gzip, bzip2 and xz, told by magic bytes, for FASTA, stdin and datasets."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import pytest
from checks import one_error_line

from synnav_cli.cli.main import cli
from synnav_cli.data.compressed import content_suffix, open_text
from synnav_cli.data.dataset import read_dataset
from synnav_cli.data.fasta import read_fasta
from synnav_cli.errors import UserError

EXAMPLE = Path(__file__).parents[1] / "data" / "example.fasta"
COMPRESSORS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.fixture(scope="module")
def plain_output():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_fasta_file_predicts_as_plain(runner, tmp_path, kind, plain_output):
    path = tmp_path / f"example.fasta.{kind}"
    path.write_bytes(COMPRESSORS[kind](EXAMPLE.read_bytes()))
    result = runner.invoke(cli, ["predict", str(path), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == plain_output


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_stdin_predicts_as_plain(runner, kind, plain_output):
    data = COMPRESSORS[kind](EXAMPLE.read_bytes())
    result = runner.invoke(cli, ["predict", "-", "--device", "cpu", "-q"], input=data)
    assert result.exit_code == 0, result.output
    assert result.stdout == plain_output


def test_plain_stdin_predicts_as_the_file(runner, plain_output):
    data = EXAMPLE.read_bytes()
    result = runner.invoke(cli, ["predict", "-", "--device", "cpu", "-q"], input=data)
    assert result.exit_code == 0, result.output
    assert result.stdout == plain_output


def test_magic_bytes_not_the_name(tmp_path):
    path = tmp_path / "proteome.fa"  # gzip inside, no .gz suffix
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf>a\nMKV\n"))  # with a byte-order mark
    assert [(r.id, r.sequence) for r in read_fasta(path)] == [("a", "MKV")]
    plain = tmp_path / "plain.fa.gz"  # a .gz name on a plain file is read as plain
    plain.write_text(">b\nMKV\n")
    assert [r.id for r in read_fasta(plain)] == ["b"]


def test_truncated_gzip_is_one_error_line(runner, tmp_path):
    path = tmp_path / "cut.fasta.gz"
    path.write_bytes(gzip.compress(EXAMPLE.read_bytes())[:200])
    result = runner.invoke(cli, ["predict", str(path), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cut.fasta.gz is not a valid gzip file (it ends early" in errors[0]
    assert result.stderr.rstrip().endswith(errors[0])  # the last word


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_corrupt_streams_are_user_errors(tmp_path, kind):
    data = bytearray(COMPRESSORS[kind](EXAMPLE.read_bytes() * 4))
    data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16
    path = tmp_path / f"bad.{kind}"
    path.write_bytes(bytes(data))
    # Damaged text may reach the parser before the checksum fails; either way, a user error.
    with pytest.raises(UserError):
        list(read_fasta(path))


def test_gzip_checksum_failure_names_the_format(tmp_path):
    data = bytearray(gzip.compress(EXAMPLE.read_bytes()))
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    path = tmp_path / "bad.fasta.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"bad.fasta.gz is not a valid gzip file \(CRC"):
        list(read_fasta(path))


def test_archives_are_named(tmp_path):
    path = tmp_path / "x.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 10)
    with pytest.raises(UserError, match="zstd archive"):
        open_text(path)


def test_closing_leaves_stdin_open(monkeypatch):
    import io
    import sys

    stdin = io.TextIOWrapper(io.BytesIO(gzip.compress(b">a\nMKV\n")))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert [r.id for r in read_fasta("-")] == ["a"]
    assert not stdin.closed


def test_content_suffix():
    assert content_suffix("data.json.gz") == ".json"
    assert content_suffix("data.TSV.xz") == ".tsv"
    assert content_suffix("data.csv") == ".csv"


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_datasets(tmp_path, small_dataset, kind):
    plain = read_dataset(small_dataset)
    path = tmp_path / f"small.json.{kind}"
    path.write_bytes(COMPRESSORS[kind](small_dataset.read_bytes()))
    assert read_dataset(path).content_hash() == plain.content_hash()
    table = tmp_path / f"small.tsv.{kind}"
    rows = ["entry\tsequence\ta", "P1\tMKV\t1", "P2\tMKL\t"]
    table.write_bytes(COMPRESSORS[kind](("\n".join(rows) + "\n").encode()))
    assert read_dataset(table).entries == ["P1", "P2"]


# Decompression bombs: a 16 MiB block compressed once and repeated (gzip, bzip2 and xz all read
# concatenated members as one stream), a few KB that expand past any protein.
BLOCK = 1 << 24
SHAPES = {
    "one line": (b"", b"M" * BLOCK),  # one letter, no newline, no header
    "one record": (b">bomb\n", (b"M" * 1023 + b"\n") * (BLOCK // 1024)),  # short lines, no end
}


def bomb(kind: str, shape: str, blocks: int) -> bytes:
    head, block = SHAPES[shape]
    compress = COMPRESSORS[kind]
    return (compress(head) if head else b"") + compress(block) * blocks


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", COMPRESSORS)
def test_decompression_bomb_is_one_line(runner, tmp_path, kind, shape):
    path = tmp_path / f"bomb.fasta.{kind}"
    path.write_bytes(bomb(kind, shape, blocks=4))  # 64 MiB decompressed, twice the bound
    assert path.stat().st_size < 200_000
    result = runner.invoke(cli, ["predict", str(path), "--device", "cpu"])
    what = "line 1 of" if shape == "one line" else "record 1 of"
    one_error_line(result, what, "bomb.fasta", "is longer than 33,554,432 characters")
    assert result.stdout == ""


def test_decompression_bomb_on_stdin_is_one_line(runner):
    result = runner.invoke(cli, ["predict", "-", "--device", "cpu"], input=bomb("bz2", "one record", 4))
    one_error_line(result, "record 1 of standard input is longer than")


def test_long_lines_and_records_in_plain_files(tmp_path):
    path = tmp_path / "plain.fasta"
    path.write_text(">a\nMKV\n>b\n" + "M" * (1 << 25) + "\n")  # exactly the bound: read
    assert [len(r.sequence) for r in read_fasta(path)] == [3, 1 << 25]
    path.write_text(">a\nMKV\n>b\n" + ("M" * 4096 + "\n") * 8193 + ">c\nMKV\n")  # one line over
    with pytest.raises(UserError, match="record 2 of .*plain.fasta is longer than"):
        list(read_fasta(path))


PEAK_RSS = """
import atexit, resource, sys
atexit.register(lambda: print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                              file=sys.stderr))
from synnav_cli.cli.main import cli
cli(sys.argv[1:], prog_name="synnav")
"""


@pytest.mark.slow
def test_a_gigabyte_bomb_on_stdin_stays_small(tmp_path):
    """A few KB of bzip2 that hold 1 GiB on one line: one error line, and memory a small step
    over a run refused at its first line."""
    import sys

    import launch

    def peak(data: bytes) -> tuple[int, str]:
        source = tmp_path / "stdin"
        source.write_bytes(data)
        with source.open("rb") as stdin:
            result = launch.run([sys.executable, "-c", PEAK_RSS, "predict", "-", "--device", "cpu"],
                                launch.environment(tmp_path), timeout=120, stdin=stdin)
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if not line.startswith("peak_rss_kb")]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-2000:]
        return int(result.stderr.rsplit("peak_rss_kb", 1)[1].split()[0]), lines[0]

    baseline, _ = peak(bz2.compress(b"MKV\n"))  # not FASTA: refused at once
    data = bomb("bz2", "one line", blocks=64)
    assert len(data) < 5_000
    used, error = peak(data)
    assert used - baseline < 200_000, (used, baseline)  # KiB; reading it whole took gigabytes
    assert "line 1 of standard input is longer than" in error
