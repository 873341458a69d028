"""The Python API: load a model once, then predict or embed sequences from a notebook or a
pipeline (docs/python.md).

    from synnav_cli import load_model
    model = load_model("bundled")
    table = model.predict({"P1": "MKT...", "P2": "MSS..."})  # a pandas DataFrame

Nothing here is a second implementation of a verb: a model is found and loaded by the CLI's load
path (``scoring.load.load_for_scoring``, so ``hf:ORG/NAME`` and every name ``--model`` takes
work here too), records are checked as ``synnav predict`` checks a FASTA file
(``data.fasta.checked_records`` and ``Validation.refusal``), scored by ``predict.run``'s
``predict_loaded`` and made into rows by the writer the TSV comes from
(``predict.writer.model_writer``), so a column added there appears in both. Calls say nothing on
stderr but warnings (``console.quieted``) and show progress only when asked; every error is one
:class:`~synnav_cli.errors.SynnavError` whose message is the CLI's line.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from synnav_cli import console
from synnav_cli.data.fasta import (
    FastaRecord,
    check_input,
    checked_records,
    read_fasta,
    validate_records,
)
from synnav_cli.data.variants import read_variants, variants_from_lines
from synnav_cli.errors import SynnavError, UserError, os_error_line, quoted
from synnav_cli.files import input_name, readable_twice
from synnav_cli.predict import domain_rows
from synnav_cli.predict.embed import CHUNK_RECORDS as EMBED_CHUNK_RECORDS
from synnav_cli.predict.embed import embed_chunks, model_encoder
from synnav_cli.predict.run import LONG_POLICIES, predict_loaded, validate_input
from synnav_cli.predict.variant_scoring import variant_table
from synnav_cli.predict.writer import model_writer
from synnav_cli.resources import install_hint
from synnav_cli.runtime import threads as torch_threads
from synnav_cli.runtime.allocator import prefer_expandable_segments
from synnav_cli.runtime.hardware import normalise_precision
from synnav_cli.scoring.load import LoadedModel, load_for_scoring

__all__ = ["Model", "SynnavError", "load_model"]

# What messages call sequences given in memory, where they would name a FASTA file.
IN_MEMORY = "the input"


def _one_error_type(function):
    """Run ``function`` quietly (warnings still show) and raise every error the CLI would print
    in one line as a :class:`SynnavError` with that line."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            with console.quieted():
                return function(*args, **kwargs)
        except SynnavError:
            raise
        except UserError as error:
            raise SynnavError(str(error)) from None
        except OSError as error:  # the CLI's one line too; the OSError stays as __context__
            raise SynnavError(os_error_line(error)) from None

    return call


@_one_error_type
def load_model(
    name: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    thresholds: float | Mapping[str, float] | Iterable[str] | None = None,
    precision: str = "auto",
    max_tokens: int | None = None,
    offline: bool = False,
    threads: int | None = None,
) -> Model:
    """Load a model once, for any number of :meth:`Model.predict` and :meth:`Model.embed` calls.

    Arguments (each as the CLI option of the same name):
        name: what ``--model`` takes: ``"bundled"``, a trained model's name or directory, or
            ``"hf:ORG/NAME"``; None: the model set with ``synnav models default``, else the
            bundled one.
        device: auto, cpu, cuda, cuda:N or mps.
        thresholds: overrides of the model's thresholds: one number for every label, a dict
            ``{label: number}``, or ``--threshold`` strings (``"0.4"``, ``"ER=0.3"``).
        precision: auto, fp32, bf16 or fp16.
        max_tokens: padded tokens per batch; None derives it from the device.
        offline: never download weights (``SYNNAV_OFFLINE=1`` says so too).
        threads: CPU threads for torch; None: the CLI's default, the CPUs this process may use.
    """
    for option, value in (("threads", threads), ("max_tokens", max_tokens)):
        if value is not None and (type(value) is not int or value < 1):
            raise UserError(f"{option} is a whole number of at least 1, not {quoted(value)}")
    prefer_expandable_segments()  # as the CLI does, before CUDA's first allocation
    torch_threads.configure(threads)
    loaded = load_for_scoring(
        None if name is None else os.fspath(name),
        threshold_values=_threshold_values(thresholds),
        device=device,
        max_tokens=max_tokens,
        offline=offline,
        precision=normalise_precision(precision),
    )
    return Model(loaded, None if name is None else os.fspath(name))


class Model:
    """A loaded model (from :func:`load_model`): predict localizations or embed sequences.

    ``sequences`` is, for both methods, a FASTA path (plain, gzip, bzip2 or xz), a dict
    ``{id: sequence}``, a pandas Series (ids as its index), or an iterable of ``(id, sequence)``
    pairs or of Biopython SeqRecords. Rows come back in input order.
    """

    def __init__(self, loaded: LoadedModel, name: str | None = None) -> None:
        self._loaded = loaded
        self._given = name or loaded.info.name
        self._encoder = None

    @property
    def name(self) -> str:
        """The model's name (``bundled`` for the bundled one; a directory's name otherwise)."""
        return self._loaded.info.name

    @property
    def path(self) -> Path:
        """The model directory."""
        return self._loaded.info.path

    @property
    def labels(self) -> list[str]:
        """The label columns of :meth:`predict`'s table, in order (``excitatory_synapse``)."""
        return model_writer(io.StringIO(), "tsv", self._loaded).label_names

    @property
    def thresholds(self) -> dict[str, float]:
        """Each label's threshold as the table's probabilities show it (inf: never called)."""
        shown = self._loaded.shown_thresholds or self._loaded.thresholds
        return dict(zip(self.labels, shown))

    @property
    def max_length(self) -> int:
        """Residues scored per protein; longer ones follow ``long`` in :meth:`predict`."""
        return self._loaded.max_length

    @property
    def device(self) -> str:
        return str(self._loaded.runtime.device)

    @property
    def precision(self) -> str:
        return self._loaded.runtime.precision

    def __repr__(self) -> str:
        return (
            f"<synnav Model {self.name!r}: {len(self.labels)} labels, backbone "
            f"{self._loaded.backbone.id}, {self.device}, {self.precision}>"
        )

    @_one_error_type
    def predict(
        self,
        sequences,
        *,
        long: str = "truncate",
        skip_invalid: bool = False,
        domain: bool = True,
        progress: bool = False,
    ):
        """The table ``synnav predict`` writes, as a pandas DataFrame: one row per record in
        input order, the TSV's columns, its numbers (probabilities rounded to 4 decimals; NaN
        where a record was not scored) and its statuses.

        Arguments:
            sequences: see :class:`Model`.
            long: truncate, window or skip, for proteins over :attr:`max_length` (``--long``).
            skip_invalid: score the valid records and give each invalid one a row whose status
                says why; without it one invalid record raises before anything is scored.
            domain: the applicability-domain columns, as the CLI adds them; False leaves them
                out, and their cost (``--no-domain``).
            progress: show a progress bar on stderr.
        """
        pandas = _pandas()  # before anything is read or scored
        _check_long(long)
        writer = model_writer(io.StringIO(), "tsv", self._loaded, domain=domain)
        rows = []
        with ExitStack() as stack:
            total, records = stack.enter_context(_records(sequences, skip_invalid))
            assessor = domain_rows.open_assessor(self._loaded.info) if domain else None
            if assessor is not None:
                stack.callback(assessor.close)
            meter = stack.enter_context(_progress(progress, total, "predict"))
            for chunk in predict_loaded(
                self._loaded, records, long_policy=long, progress=meter, domain=assessor
            ):
                rows += [writer.values(prediction) for prediction in chunk]
        if not rows:
            raise UserError("no records to predict")
        return _frame(pandas, writer.columns, rows)

    @_one_error_type
    def embed(self, sequences, *, progress: bool = False) -> np.ndarray:
        """Per-protein embeddings, as ``synnav embed --model`` writes them: a float32 array
        ``[proteins, dimensions]`` in input order, each row the mean of the protein's residue
        vectors (what the model's head reads), over its first :attr:`max_length` residues.

        Arguments:
            sequences: see :class:`Model`. Invalid records raise, as in ``synnav embed``.
            progress: show a progress bar on stderr.
        """
        if self._encoder is None:
            self._encoder = model_encoder(self._loaded, self._given)
        pooled = []
        with ExitStack() as stack:
            total, records = stack.enter_context(_records(sequences, False))
            meter = stack.enter_context(_progress(progress, total, "embed"))
            for chunk in embed_chunks(
                self._encoder,
                records,
                per_residue=False,
                dtype=np.float32,
                chunk_records=EMBED_CHUNK_RECORDS,
                progress=meter,
            ):
                pooled.append(chunk.pooled)
        if not pooled:
            raise UserError("no records to embed")
        return np.concatenate(pooled)

    @_one_error_type
    def variants(self, references, variants, *, long: str = "truncate", skip_invalid: bool = False,
                 sort: str = "input", domain: bool = True, progress: bool = False):  # fmt: skip
        """The table ``synnav variants`` writes, as a pandas DataFrame (docs/variants.md).

        Arguments:
            references: the reference proteins, given as :class:`Model` takes sequences.
            variants: a variant table or annotated VCF (a path), or its lines in memory
                (``["P04637 p.Arg175His", ...]``).
            long, skip_invalid, domain, progress: as for :meth:`predict`.
            sort: ``input``, or ``delta`` (largest change first; ties keep input order).
        """
        pandas = _pandas()  # before anything is read or scored
        _check_long(long)
        paths = [isinstance(given, (str, os.PathLike)) for given in (references, variants)]
        where = input_name(os.fspath(references)) if paths[0] else IN_MEMORY
        label = input_name(os.fspath(variants)) if paths[1] else "the variants"
        found = read_variants(os.fspath(variants)) if paths[1] else variants_from_lines(variants)
        with _records(references, True) as (_, records), _progress(progress, 0, "variants") as bar:
            options = {"long_policy": long, "skip_invalid": skip_invalid, "sort": sort}
            table = variant_table(self._loaded, found, records, where, label, progress=bar,
                                  domain=domain, **options)  # fmt: skip
        return _frame(pandas, *table)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise UserError(
            "Model.predict returns a pandas DataFrame, and pandas is not installed: "
            f"{install_hint('pandas')}"
        ) from None
    return pandas


def _check_long(policy: str) -> None:
    if policy not in LONG_POLICIES:
        raise UserError(
            f"unknown long-protein policy {policy!r}; choose {', '.join(LONG_POLICIES)}"
        )


def _frame(pandas, columns: list[str], rows: list[list]):
    """The DataFrame of writer rows, cell for cell the TSV's: called labels joined by ``;``,
    NaN where a cell is empty (pandas' missing value, in text columns too), and every column of
    numbers or nothing as float64."""
    rows = [
        [";".join(v) if isinstance(v, list) else math.nan if v is None else v for v in row]
        for row in rows
    ]
    frame = pandas.DataFrame(rows, columns=columns)
    for position in range(len(columns)):
        if all(isinstance(row[position], float) for row in rows):
            frame.isetitem(position, frame.iloc[:, position].astype("float64"))
    return frame


@contextmanager
def _progress(shown: bool, total: int, label: str) -> Iterator[console.Progress | None]:
    meter = console.Progress(total, label, bar=True) if shown else None
    try:
        yield meter
    finally:
        if meter is not None:
            meter.close()


@contextmanager
def _records(sequences, skip_invalid: bool) -> Iterator[tuple[int, Iterator[FastaRecord]]]:
    """The number of records and the records of ``sequences``, checked whole first as
    ``synnav predict`` checks its input (:func:`~synnav_cli.predict.run.validate_input`)."""
    if isinstance(sequences, (str, os.PathLike)):
        path = os.fspath(sequences)
        _check_path(path)
        with readable_twice(path) as source:
            total = validate_input(source, input_name(source), skip_invalid)
            yield total, read_fasta(source, keep_invalid=skip_invalid)
        return
    records = list(checked_records(_entries(sequences), IN_MEMORY, keep_invalid=True))
    problem = validate_records(records).refusal(IN_MEMORY, skip_invalid)
    if problem is not None:
        raise UserError(problem)
    yield len(records), iter(records)


def _check_path(path: str) -> None:
    """check_input's message, with a hint for a sequence given where a path goes."""
    if path != "-" and path.isalpha() and not Path(path).exists():
        raise UserError(
            f"file not found: {quoted(path)}; a string is read as a FASTA path: give sequences "
            "as a dict {id: sequence} or a list of (id, sequence) pairs"
        )
    check_input(path)


def _entries(sequences) -> Iterator[tuple[str, str, str]]:
    """``(id, description, sequence)`` of what :class:`Model` takes in memory."""
    if hasattr(sequences, "columns"):  # a DataFrame: which column holds the sequences?
        raise UserError(
            "give one column of a DataFrame (a Series of sequences with the ids as its index, "
            "e.g. frame.set_index('id')['sequence']), not the DataFrame"
        )
    pairs = sequences.items() if hasattr(sequences, "items") else sequences
    if isinstance(pairs, bytes) or not isinstance(pairs, Iterable):
        raise UserError(
            "sequences are a FASTA path, a dict {id: sequence}, a pandas Series or a list of "
            f"(id, sequence) pairs, not {type(sequences).__name__}"
        )
    for number, pair in enumerate(pairs, 1):
        if hasattr(pair, "id") and hasattr(pair, "seq"):  # a Biopython SeqRecord
            record_id, sequence = pair.id, pair.seq
        elif isinstance(pair, str):  # "AB" would unpack into an id and a sequence
            raise UserError(
                f"item {number:,} of {IN_MEMORY} is a string, not an (id, sequence) pair: "
                f"{quoted(pair)}; give a dict {{id: sequence}} or (id, sequence) pairs"
            )
        else:
            try:
                record_id, sequence = pair
            except (TypeError, ValueError):
                raise UserError(
                    f"item {number:,} of {IN_MEMORY} is not an (id, sequence) pair: {quoted(pair)}"
                ) from None
        yield _identifier(record_id, number), "", _sequence(sequence, number)


def _identifier(value, number: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(value)  # a Series' default index: 0, 1, 2, ...
    raise UserError(
        f"record {number:,} of {IN_MEMORY}: an id is a string, not {type(value).__name__} "
        f"({quoted(value)})"
    )


def _sequence(value, number: int) -> str:
    """The text of a sequence; a missing one (None, NaN) is empty, an invalid record."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if type(value).__name__ in ("Seq", "MutableSeq"):  # Biopython's sequence types
        return str(value)
    raise UserError(
        f"record {number:,} of {IN_MEMORY}: a sequence is a string, not "
        f"{type(value).__name__} ({quoted(value)})"
    )


def _threshold_values(thresholds) -> list[str]:
    """load_model's ``thresholds`` as ``--threshold`` values, checked as those are."""
    if thresholds is None:
        return []
    if isinstance(thresholds, numbers.Real) and not isinstance(thresholds, bool):
        return [repr(float(thresholds))]
    if isinstance(thresholds, Mapping):
        return [f"{label}={value}" for label, value in thresholds.items()]
    if isinstance(thresholds, str):
        return [thresholds]
    return [str(value) for value in thresholds]
