"""Settings of PyTorch's CUDA memory allocator, made before torch is imported or CUDA used."""

from __future__ import annotations

import os

ALLOCATOR_SETTINGS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def prefer_expandable_segments() -> None:
    """Ask PyTorch's CUDA allocator for expandable segments unless the user configured it.

    Batches of varying length leave the default allocator's fixed-size segments fragmented: a
    long run can fail to find a block its free memory would hold. Expandable segments grow one
    mapping instead, so the memory model's budget (which plans for a share of the free memory)
    is not eaten by fragmentation. It must be set before CUDA's first allocation; CPU runs
    ignore it. ``PYTORCH_CUDA_ALLOC_CONF`` is the name every supported torch reads.
    """
    if not any(name in os.environ for name in ALLOCATOR_SETTINGS):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
