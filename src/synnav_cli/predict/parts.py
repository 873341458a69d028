"""Which shard a ``synnav predict --shard I/N --out PART`` file holds: ``PART.shard.json``.

The part stays a plain TSV, CSV or JSON lines file, which pandas or R read as they read any
other output; the record beside it says what an embedding part keeps in its own metadata:

- ``shard``: ``"I/N"``;
- ``input_sha256`` and ``input_records``: the whole input's records (identifiers and
  sequences, as resume checks them) and how many there are;
- ``rows`` and ``sha256``: the rows the part holds and a sha256 of its bytes, so a part that was
  cut short, edited or replaced since is not taken for its shard;
- ``run``: the model and the options that shape the rows, the same in every part of one run.

The record is written atomically before the part is renamed into place, so a finished part
always has it. ``synnav merge`` reads the records (:func:`check_parts`) and refuses, in one line
naming the parts, a part that is missing or given twice, parts of different runs or inputs, and
parts out of shard order.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from synnav_cli import __version__
from synnav_cli.errors import UserError
from synnav_cli.files import write_json_atomic

SUFFIX = ".shard.json"
FORMAT = "synnav-predictions-part"
_MAX_BYTES = 1 << 20  # a record is a few hundred bytes; anything far larger is not one


def record_path(part: Path) -> Path:
    """Where the shard record of ``part`` lives: ``PART.shard.json`` beside it."""
    part = Path(part)
    return part.with_name(part.name + SUFFIX)


def write_record(
    part: Path, *, shard: tuple[int, int], input_sha256: str, input_records: int,
    rows: int, sha256: str, run: dict,
) -> None:
    """Record that ``part`` (about to be renamed into place) holds shard ``shard`` (0-based index,
    count) of an input, ``rows`` rows whose bytes hash to ``sha256``, made by ``run``."""
    write_json_atomic(
        record_path(part),
        {
            "format": FORMAT,
            "synnav": __version__,
            "shard": f"{shard[0] + 1}/{shard[1]}",
            "input_sha256": input_sha256,
            "input_records": input_records,
            "rows": rows,
            "sha256": sha256,
            "run": run,
        },
    )


def check_parts(parts: Sequence[Path]) -> list[Path]:
    """The parts without a shard record (written to stdout, or by an older synnav), whose rows
    only their identifiers against the input can check; when every part has one, checks them
    all and raises :class:`UserError` in one line unless they are shards 1..N of one run, whole
    and in order (and returns an empty list).
    """
    records = [_read(Path(part)) for part in parts]
    if any(record is None for record in records):
        return [Path(part) for part, record in zip(parts, records) if record is None]
    shards = [_shard(part, record) for part, record in zip(parts, records)]
    first, count = records[0], shards[0][1]
    for part, record, (index, total) in zip(parts, records, shards):
        if total != count:
            raise UserError(
                f"{part} is shard {index}/{total} but {parts[0]} is shard "
                f"{shards[0][0]}/{count}: they are not parts of one run"
            )
        if record["input_sha256"] != first["input_sha256"]:
            raise UserError(f"{part} was predicted from another input than {parts[0]}")
        for key in sorted(set(record["run"]) | set(first["run"])):
            if record["run"].get(key) != first["run"].get(key):
                raise UserError(f"{part} was predicted differently from {parts[0]} ({key} differs)")
    seen: dict[int, Path] = {}
    for part, (index, _) in zip(parts, shards):
        if index in seen:
            raise UserError(f"{seen[index]} and {part} are both shard {index}/{count}: give each once")
        seen[index] = Path(part)
    missing = [f"{index}/{count}" for index in range(1, count + 1) if index not in seen]
    if missing:
        raise UserError(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} missing: give all {count} parts"
        )
    for position, (part, record, (index, _)) in enumerate(zip(parts, records, shards), start=1):
        if index != position:
            raise UserError(
                f"{part} is shard {index}/{count} but is given as part {position}: "
                "give the parts in shard order"
            )
        share = len(range(index - 1, record["input_records"], count))
        if record["rows"] != share or _sha256(Path(part)) != record["sha256"]:
            raise UserError(
                f"{part} does not match its record {record_path(part).name} (shard "
                f"{index}/{count} of {record['input_records']} records): it was changed or "
                "cut short since predict wrote it"
            )
    return []


def _read(part: Path) -> dict | None:
    """The record of ``part``, None when there is none; one line when it is not one."""
    path = record_path(part)
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UserError(f"{path} cannot be read: {error.strerror or error}") from None
    if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_BYTES:
        raise UserError(f"{path} is not a shard record synnav wrote")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, encoding="utf-8") as handle:
            record = json.loads(handle.read(_MAX_BYTES + 1))
    except OSError as error:
        raise UserError(f"{path} cannot be read: {error.strerror or error}") from None
    except (ValueError, RecursionError):
        raise UserError(f"{path} is not a shard record synnav wrote") from None
    valid = (
        isinstance(record, dict)
        and record.get("format") == FORMAT
        and isinstance(record.get("shard"), str)
        and isinstance(record.get("input_sha256"), str)
        and all(
            isinstance(record.get(key), int) and not isinstance(record.get(key), bool)
            and record[key] >= 0
            for key in ("input_records", "rows")
        )
        and isinstance(record.get("sha256"), str)
        and isinstance(record.get("run"), dict)
    )
    if not valid:
        raise UserError(f"{path} is not a shard record synnav wrote")
    return record


def _shard(part: Path, record: dict) -> tuple[int, int]:
    index, _, count = record["shard"].partition("/")
    digits = all(n.isascii() and n.isdigit() and len(n) <= 10 for n in (index, count))
    if not (digits and 1 <= int(index) <= int(count)):
        raise UserError(f"{record_path(part)} is not a shard record synnav wrote")
    return int(index), int(count)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
