"""The applicability domain: how far a query protein is from the proteins a model was trained on.

``index.py`` stores what that needs in the model directory (``domain.safetensors``: training ids
and sequences, a bounded sample of their pooled embeddings, the thresholds set on dev) and reads
it back as hostile input; ``kmer.py`` finds each query's nearest training protein by exact shared
5-mers and scores identity and coverage on the diagonals they lie on; ``mmseqs.py`` does the same
with MMseqs2 when it is installed; ``assess.py`` joins identity and embedding distance into the
``in`` / ``edge`` / ``out`` call. Embeddings are computed by the callers (predict, train), which
own the model; nothing here runs a network.
"""
