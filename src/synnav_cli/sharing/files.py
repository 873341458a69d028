"""Which files of a model directory travel through the Hub, and the checks each passes.

A model directory lists its files: ``synnav-model.json``, ``model.safetensors`` and any name in
the metadata's ``files`` (a list of names, or an object keyed by name), so a file another part of
synnav adds to model directories travels once it is listed there. ``synnav models push`` uploads
exactly those, with a manifest (``synnav-files.json``) of their sizes and sha256 hashes;
``synnav models pull`` reads the manifest first and fetches only what it names.

Everything read back from the Hub is hostile: names are plain file names of a few known kinds
(never a path, never a pickle), sizes are bounded before a byte is parsed, and a ``.safetensors``
file must be one (a zip or pickle checkpoint renamed, or a header declaring gigabytes, is refused
before safetensors opens it).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from synnav_cli.errors import UserError, one_line, quoted

# The names modeldir writes (tests/test_model_sharing.py checks that they agree); modeldir sits
# above this package, which it calls to resolve `hf:` names.
METADATA_FILE = "synnav-model.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "synnav-files.json"
CARD_FILE = "README.md"
SOURCE_FILE = "synnav-source.json"  # beside a pulled model: where it came from; never uploaded
MANIFEST_FORMAT = 1

# Weights only as safetensors; everything else as text a reader parses without running code.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".tsv", ".txt")
RESERVED = {MANIFEST_FILE, CARD_FILE, SOURCE_FILE, ".gitattributes"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_FILES = 64
MAX_MANIFEST_BYTES = 1 << 20
MAX_TEXT_BYTES = 64 << 20  # a JSON or table file beside the weights
MAX_WEIGHTS_BYTES = 64 << 30  # a fully fine-tuned ESM2 3B in fp32 is about 11 GiB
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself applies
_HASH_CHUNK = 16 << 20


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a file of a shared model, or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        return f"{quoted(name)} is not a plain file name"
    if name in RESERVED:
        return f"{quoted(name)} is a name synnav reserves"
    if not name.endswith(ALLOWED_SUFFIXES):
        return f"{quoted(name)} is not one of the kinds shared ({', '.join(ALLOWED_SUFFIXES)})"
    return None


def listed_files(meta: dict) -> list[str]:
    """The files a model directory's metadata lists, metadata and weights first."""
    extra = meta.get("files", [])
    if isinstance(extra, dict):
        extra = list(extra)
    if not isinstance(extra, list):
        raise UserError("the model metadata's 'files' must list file names")
    names = [
        METADATA_FILE,
        WEIGHTS_FILE,
        *(n for n in extra if n not in (METADATA_FILE, WEIGHTS_FILE)),
    ]
    problem = next((p for p in map(name_problem, names) if p), None)
    if problem:
        raise UserError(f"the model metadata's 'files' cannot be shared: {problem}")
    if len(set(names)) != len(names) or len(names) > MAX_FILES:
        raise UserError(f"the model metadata lists a file twice, or more than {MAX_FILES} files")
    return names


def list_model_file(folder: Path, name: str) -> None:
    """Record file ``name`` of the model directory ``folder`` in its metadata's ``files``, so
    that ``synnav models push`` carries it. For code that adds a file to a model directory after
    it was saved (the file itself must exist)."""
    problem = name_problem(name)
    if problem or not (Path(folder) / name).is_file():
        raise ValueError(problem or f"{folder} has no file {name}")
    path = Path(folder) / METADATA_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    listed = meta.get("files", [])
    if isinstance(listed, dict):
        listed = list(listed)
    if name not in listed:
        from synnav_cli.files import write_json_atomic

        write_json_atomic(path, {**meta, "files": [*listed, name]})


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _limit(name: str) -> int:
    return MAX_WEIGHTS_BYTES if name.endswith(".safetensors") else MAX_TEXT_BYTES


def content_problem(path: Path, name: str, size: int) -> str | None:
    """What is wrong with the content of file ``name`` (``size`` bytes) at ``path``, or None."""
    limit = _limit(name)
    if size > limit:
        return f"{name} is {size:,} bytes, over the {limit:,} allowed"
    if name.endswith(".safetensors"):
        return _safetensors_problem(path, name, size)
    try:
        text = path.read_bytes().decode("utf-8")
        if name.endswith(".json"):
            json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return f"{name} is not UTF-8 text{' JSON' if name.endswith('.json') else ''}: {one_line(error)}"
    return None


def _safetensors_problem(path: Path, name: str, size: int) -> str | None:
    with open(path, "rb") as stream:
        head = stream.read(9)
    if head.startswith(b"PK\x03\x04"):
        return f"{name} is a zip archive (a torch checkpoint, which runs code when loaded), not safetensors"
    declared = int.from_bytes(head[:8], "little")
    # A header length whose low byte is 0x80 is as valid as any other, so a leading 0x80 means a
    # pickle only when the file does not read as a length followed by a JSON header.
    header_fits = len(head) == 9 and 8 + declared <= size and head[8:9] == b"{"
    if head[:1] == b"\x80" and not header_fits:
        return f"{name} is a pickle (which runs code when loaded), not safetensors"
    if len(head) < 8:
        return f"{name} is too short to be safetensors ({size} bytes)"
    if declared > MAX_HEADER_BYTES:
        return (
            f"{name} declares a {declared:,}-byte header (safetensors allows {MAX_HEADER_BYTES:,})"
        )
    if 8 + declared > size:
        return f"{name} declares a {declared:,}-byte header but holds {size:,} bytes"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as opened:
            opened.keys()
    except Exception as error:  # noqa: BLE001 - safetensors raises several types
        return f"{name} is not a valid safetensors file: {one_line(error)}"
    return None


def manifest_for(folder: Path, names: list[str]) -> dict:
    """The manifest of ``names`` in ``folder``: each file's size and sha256, checked on the way.

    A listed file that is missing, a link, or of the wrong content is a ``UserError``.
    """
    files = {}
    for name in names:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{folder} lists {name}, which is missing or not a regular file")
        size = path.stat().st_size
        problem = content_problem(path, name, size)
        if problem:
            raise UserError(f"{folder}: {problem}")
        files[name] = {"size": size, "sha256": sha256_of(path)}
    return {"synnav_files": MANIFEST_FORMAT, "files": files}


def read_manifest(path: Path, repo: str) -> dict[str, dict]:
    """The files a pulled repository's manifest names (name -> size and sha256), all checked."""
    where = f"{repo}: {MANIFEST_FILE}"
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise UserError(f"{where} is {size:,} bytes, over the {MAX_MANIFEST_BYTES:,} allowed")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UserError(f"{where} is damaged: {one_line(error)}") from None
    version = manifest.get("synnav_files") if isinstance(manifest, dict) else None
    if type(version) is not int or version < 1:
        raise UserError(f"{where} is not a synnav manifest")
    if version > MANIFEST_FORMAT:
        raise UserError(f"{where} is in format {version}, from a newer synnav: upgrade synnav")
    files = manifest.get("files")
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise UserError(f"{where} must map at most {MAX_FILES} file names to their hashes")
    for name, entry in files.items():
        problem = name_problem(name)
        if problem is None and not _entry_ok(entry):
            problem = f"the entry of {quoted(name)} needs a size and a sha256"
        elif problem is None and entry["size"] > _limit(name):
            problem = (
                f"{name} is declared {entry['size']:,} bytes, over the {_limit(name):,} allowed"
            )
        if problem:
            raise UserError(f"{where} is refused: {problem}")
    missing = {METADATA_FILE, WEIGHTS_FILE} - set(files)
    if missing:
        raise UserError(f"{where} does not list {', '.join(sorted(missing))}")
    return files


def _entry_ok(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    size, digest = entry.get("size"), entry.get("sha256")
    return (
        type(size) is int
        and 0 <= size
        and isinstance(digest, str)
        and re.fullmatch(r"[0-9a-f]{64}", digest) is not None
    )


def check_pulled_file(path: Path, name: str, entry: dict, repo: str) -> None:
    """Raise a one-line ``UserError`` unless ``path`` is file ``name`` as the manifest records it."""
    size = path.stat().st_size
    if size != entry["size"]:
        raise UserError(
            f"{repo}: {name} is {size:,} bytes where the manifest says {entry['size']:,}"
        )
    problem = content_problem(path, name, size)
    if problem:
        raise UserError(f"{repo} is refused: {problem}")
    if sha256_of(path) != entry["sha256"]:
        raise UserError(f"{repo}: {name} does not match the sha256 its manifest records")
