"""Options shared by the commands that run models: --device, --threads, --offline, --quiet,
--verbose; --precision for those that score."""

from __future__ import annotations

from pathlib import Path

import click

from synnav_cli import console
from synnav_cli.errors import UserError

# runtime.hardware.PRECISIONS, spelled out: importing hardware imports torch, which would make
# `synnav --help` take seconds (tests/test_option_checks.py keeps the two equal).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        console.set_verbosity(quiet=param.name == "quiet", verbose=param.name == "verbose")
    return value


def _threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if ctx.resilient_parsing:
        return value
    from synnav_cli.runtime import threads

    # Once, before any model is built; training takes the same count whatever the load.
    threads.configure(value, load_aware=ctx.info_name != "train")
    return value


def common_options(function):
    """--device, --threads, --offline, --quiet and --verbose, shared by the commands that run
    models."""
    function = click.option(
        "--verbose",
        "-v",
        is_flag=True,
        is_eager=True,  # before --threads, which reports under -v
        expose_value=False,
        callback=_verbosity,
        help="Say more on stderr.  [default: off]",
    )(function)
    function = click.option(
        "--quiet",
        "-q",
        is_flag=True,
        is_eager=True,  # before --threads, which reports under -v
        expose_value=False,
        callback=_verbosity,
        help="Say nothing on stderr but errors and warnings.  [default: off]",
    )(function)
    function = click.option(
        "--offline",
        is_flag=True,
        envvar="SYNNAV_OFFLINE",
        help="Never download weights; use the cache only.  [default: off; env: SYNNAV_OFFLINE]",
    )(function)
    function = click.option(
        "--threads",
        type=click.IntRange(min=1),
        envvar="SYNNAV_THREADS",
        expose_value=False,
        callback=_threads,
        help="CPU threads for torch.  [default: the CPUs this process may use (affinity and "
        "cgroup quota) less those other tasks keep busy (not for train), at least 1; one for "
        "models of many small operations, such as the bundled one; or OMP_NUM_THREADS; "
        "env: SYNNAV_THREADS]",
    )(function)
    function = click.option(
        "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."
    )(function)
    return function


def _precision(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if ctx.resilient_parsing:
        return value
    from synnav_cli.runtime import hardware

    return hardware.normalise_precision(value)  # an unknown name is a one-line error


def precision_option(function):
    """--precision for the commands that score (predict, evaluate, embed)."""
    return click.option(
        "--precision",
        default="auto",
        metavar=f"[{'|'.join(PRECISIONS)}]",
        callback=_precision,
        help="Numeric precision. auto: fp32 on CPU (the official models' numbers), bf16 on GPUs "
        "that have it (else fp16). bf16 on a CPU with AVX512-BF16 or AMX: the ESM backbones run "
        "about 2-3x faster and probabilities move slightly (docs/benchmarks.md); other CPUs "
        "run fp32 and say so.  [default: auto]",
    )(function)


def default_dataset() -> Path:
    """The dataset shipped with the package: the default --data of train and evaluate."""
    from synnav_cli.resources import bundled_dataset_path

    path = bundled_dataset_path()
    if path is None:
        raise UserError("no --data given and this installation ships no dataset")
    console.info(f"Using the bundled dataset {path}.")
    return path
