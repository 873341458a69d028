#!/usr/bin/env python3
"""The domain columns of the bundled model: accuracy by domain bin on the test split, and cost.

1. ``bins``: every test protein of data/dataset.json scored by the bundled model with its domain
   call (k-mer method: what every machine has); ROC-AUC and F1 (at the model's thresholds) of
   each label within each bin, and their means.
2. ``cost``: proteome-scale cost. N proteins (default 20,000): the dataset's dev and test
   proteins, the proteins of --fasta, then substituted copies of training proteins (0-50% of
   positions changed) up to N, so that many have a homologue in training, the costly case for
   the alignment step. Times, in one process: the k-mer search and the MMseqs2 search (when
   installed) on the first --mmseqs-n, the embedding distance on all N; scoring with and
   without the domain columns (``predict_chunks``, predict's default batch budget) on the first
   --scored proteins. Wall and CPU seconds (this process and its children); ratios are of CPU
   seconds in the same run, scoring scaled to N from the scored proteins.

Usage:
    python benchmarks/domain_report.py bins
    python benchmarks/domain_report.py cost --n 20000 --scored 200 --mmseqs-n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import datetime, timezone

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from synnav_cli.data.dataset import read_dataset
from synnav_cli.data.fasta import FastaRecord, read_fasta
from synnav_cli.data.homology import mmseqs_available
from synnav_cli.domain.assess import DomainAssessor, nearest_distances
from synnav_cli.domain.index import ALPHABET, read_index
from synnav_cli.domain.kmer import KmerSearch
from synnav_cli.modeldir import resolve_model
from synnav_cli.predict.run import predict_chunks
from synnav_cli.resources import bundled_dataset_path
from synnav_cli.scoring.load import open_model


def _load(max_tokens: int | None = None):
    info, _ = resolve_model("bundled")
    return open_model(info, device="cpu", precision="fp32", max_tokens=max_tokens)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (mmseqs): a measure that a busy
    shared machine distorts far less than wall time."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Clock:
    def __init__(self, times: dict, name: str):
        self.times, self.name = times, name

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()

    def __exit__(self, *_):
        self.times[self.name] = {
            "wall_s": round(time.perf_counter() - self.wall, 2),
            "cpu_s": round(_cpu() - self.cpu, 2),
        }


def _records(sequences, prefix="q"):
    return [FastaRecord(f"{prefix}{i}", "", s) for i, s in enumerate(sequences)]


def _predict(loaded, records, domain):
    out = []
    for chunk in predict_chunks(
        loaded.model,
        loaded.backbone,
        records,
        loaded.runtime,
        max_length=loaded.max_length,
        domain=domain,
    ):
        out.extend(chunk)
    return out


def bins() -> dict:
    loaded = _load(16384)  # faster on CPU than the default budget, same numbers (1e-10)
    test = read_dataset(bundled_dataset_path()).subset("test")
    assessor = DomainAssessor(read_index(loaded.info.path), "kmer")
    predictions = _predict(loaded, _records(test.sequences), assessor)
    probs = np.stack([p.probabilities for p in predictions])
    domains = np.array([p.domain.domain for p in predictions])
    thresholds = np.array(loaded.thresholds)
    result = {}
    for name in ("in", "edge", "out", "all"):
        chosen = np.ones(len(domains), bool) if name == "all" else domains == name
        per_label = {}
        for j, label in enumerate(test.label_names):
            y = test.labels[chosen, j]
            known = ~np.isnan(y)
            y, p = y[known], probs[chosen, j][known]
            if len(np.unique(y)) < 2:
                continue
            per_label[label] = {
                "roc_auc": round(float(roc_auc_score(y, p)), 3),
                "f1": round(float(f1_score(y, p >= thresholds[j])), 3),
                "positives": int(y.sum()),
            }
        result[name] = {
            "proteins": int(chosen.sum()),
            "mean_roc_auc": round(float(np.mean([v["roc_auc"] for v in per_label.values()])), 3),
            "mean_f1": round(float(np.mean([v["f1"] for v in per_label.values()])), 3),
            "labels": per_label,
        }
    return result


def _queries(n: int, fasta: str | None) -> list[str]:
    data = read_dataset(bundled_dataset_path())
    queries = list(data.subset("test").sequences) + list(data.subset("dev").sequences)
    if fasta:
        queries += [r.sequence for r in read_fasta(fasta) if r.problem is None]
    train = data.subset("train").sequences
    rng = np.random.default_rng(0)
    while len(queries) < n:
        letters = list(train[int(rng.integers(len(train)))])
        changed = rng.random(len(letters)) < rng.uniform(0.0, 0.5)
        for p in np.flatnonzero(changed):
            letters[p] = ALPHABET[int(rng.integers(20))]
        queries.append("".join(letters))
    return queries[:n]


def cost(n: int, scored: int, mmseqs_n: int, fasta: str | None) -> dict:
    loaded = _load()
    index = read_index(loaded.info.path)
    queries = _queries(n, fasta)
    times: dict = {}
    with _Clock(times, "kmer_setup"):
        search = KmerSearch(index)
    with _Clock(times, f"kmer_search_{n}"):
        search.nearest(queries)
    pooled = np.random.default_rng(0).normal(size=(n, index.embeddings.shape[1]))
    with _Clock(times, f"embedding_distance_{n}"):
        nearest_distances(index.embeddings, pooled.astype(np.float32))
    if mmseqs_available() and mmseqs_n:
        from synnav_cli.domain.mmseqs import MmseqsSearch

        with _Clock(times, f"mmseqs_search_{mmseqs_n}"):
            mm = MmseqsSearch(index, threads=1)
            mm.nearest(queries[:mmseqs_n])
            mm.close()
    records = _records(queries[:scored])
    with _Clock(times, f"score_{scored}_without_domain"):
        _predict(loaded, records, None)
    with _Clock(times, f"score_{scored}_with_kmer_domain"):
        _predict(loaded, records, DomainAssessor(index, "kmer"))
    plain = times[f"score_{scored}_without_domain"]["cpu_s"] / scored * n
    kmer_total = sum(times[k]["cpu_s"] for k in ("kmer_setup", f"kmer_search_{n}"))
    kmer_total += times[f"embedding_distance_{n}"]["cpu_s"]
    ratios = {
        "scoring_cpu_s_at_n_from_scored": round(plain, 1),
        "kmer_domain_cpu_over_scoring_cpu_at_n": round(kmer_total / plain, 3),
        "with_over_without_domain_cpu_scored": round(
            times[f"score_{scored}_with_kmer_domain"]["cpu_s"]
            / times[f"score_{scored}_without_domain"]["cpu_s"],
            3,
        ),
    }
    if f"mmseqs_search_{mmseqs_n}" in times:
        mm_at_n = times[f"mmseqs_search_{mmseqs_n}"]["cpu_s"] / mmseqs_n * n
        ratios["mmseqs_cpu_over_scoring_cpu_at_n_from_subset"] = round(mm_at_n / plain, 3)
    load = os.getloadavg()
    return {"proteins": n, "times": times, "ratios": ratios, "load_average": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["bins", "cost"])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--scored", type=int, default=2_000)
    parser.add_argument("--mmseqs-n", type=int, default=2_000)
    parser.add_argument("--fasta", default=None)
    args = parser.parse_args()
    result = bins() if args.what == "bins" else cost(args.n, args.scored, args.mmseqs_n, args.fasta)
    result["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["machine"] = f"{platform.processor() or platform.machine()}, torch threads " + str(
        torch.get_num_threads()
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
