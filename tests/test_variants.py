"""synnav variants: HGVS protein notation read and checked, each sequence scored once, rows."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from checks import one_error_line

from synnav_cli.cli.main import cli
from synnav_cli.data.fasta import read_fasta
from synnav_cli.data.hgvs import apply_changes, parse_hgvs_protein
from synnav_cli.data.variants import Variant, read_variants
from synnav_cli.errors import SynnavError, UserError
from synnav_cli.predict import variant_scoring as scoring_module
from synnav_cli.predict import variants as variants_module
from synnav_cli.predict.variant_rows import VariantRow, sort_rows
from synnav_cli.predict.writer import Prediction
from synnav_cli.train.config import TrainConfig
from synnav_cli.train.run import train

DATA = Path(__file__).parent / "data"
# 40 residues: R at 5, G at 12, K at 15, C at 28.
REFERENCE = "MKTARIAKQRQGSFKSHFSRQLEERLGCIEVQMEEPQSDP"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_plugin) -> Path:
    records = json.loads((DATA / "small.json").read_text())[:60]
    data = tmp_path_factory.mktemp("data") / "small60.json"
    data.write_text(json.dumps(records))
    out = tmp_path_factory.mktemp("models") / "tiny-variants"
    train(TrainConfig(backbone="tiny", epochs=2, batch_size=16, learning_rate=3e-3), data, out,
          device="cpu")
    return out


def _files(tmp_path: Path, table: str, fasta: dict[str, str] | None = None) -> tuple[Path, Path]:
    fasta = fasta or {"P1": REFERENCE, "sp|Q2|TWO_HUMAN": REFERENCE[::-1]}
    reference = tmp_path / "ref.fasta"
    reference.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in fasta.items()))
    variants = tmp_path / "variants.tsv"
    variants.write_text(table)
    return reference, variants


def _rows(text: str, delimiter: str = "\t") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


# Notation


@pytest.mark.parametrize("text, kind, start, end, inserted", [
    ("p.Arg5Trp", "substitution", 5, 5, "W"),
    ("p.R5W", "substitution", 5, 5, "W"),
    ("p.(Arg5Trp)", "substitution", 5, 5, "W"),
    ("p.Arg5=", "synonymous", 5, 5, ""),
    ("p.R5R", "synonymous", 5, 5, ""),
    ("p.Arg5Ter", "nonsense", 5, 5, "*"),
    ("p.R5*", "nonsense", 5, 5, "*"),
    ("p.Gly12del", "deletion", 12, 12, ""),
    ("p.Gly12_Lys15del", "deletion", 12, 15, ""),
    ("p.G12_K15dup", "duplication", 12, 15, ""),
    ("p.Gly12_Ser13insGlnTrp", "insertion", 12, 13, "QW"),
    ("p.Cys28delinsTrpVal", "delins", 28, 28, "WV"),
    ("p.G12_K15delinsAla", "delins", 12, 15, "A"),
    ("NP_000537.3:p.Arg5Trp", "substitution", 5, 5, "W"),
])
def test_each_notation_form_parses(text, kind, start, end, inserted):
    _accession, (change,) = parse_hgvs_protein(text)
    assert (change.kind, change.start, change.end, change.inserted) == (kind, start, end, inserted)


def test_haplotype_and_accession():
    accession, changes = parse_hgvs_protein("ENSP00000269305.4:p.[Arg5Trp;Gly12del]")
    assert accession == "ENSP00000269305.4"
    assert [(c.kind, c.start) for c in changes] == [("substitution", 5), ("deletion", 12)]
    assert parse_hgvs_protein("p.=") == (None, [])


@pytest.mark.parametrize("text, needle", [
    ("p.Arg5", "not a protein change"),
    ("p.Xyz5Trp", "not a protein change"),
    ("p.Arg0Trp", "not a protein change"),
    ("p.Arg5Trpp", "not a protein change"),
    ("R5W", "not a protein variant"),
    ("c.14A>G", "not a protein variant"),
    ("p.Arg5ProfsTer23", "frameshift"),
    ("p.Ter41GlnextTer5", "extension"),
    ("p.Met1?", "unknown effect"),
    ("p.Gly12_Lys10del", "lower to a higher"),
    ("p.Gly12_Lys15insGln", "neighbouring residues"),
    ("p.[Arg5Trp];[Gly12Ser]", "p.[A;B]"),
    ("p.[Arg5Trp;]", "p.[A;B]"),
    ("bad acc:p.R5W", "not an accession"),
])
def test_malformed_notation_is_one_line(text, needle):
    with pytest.raises(UserError) as caught:
        parse_hgvs_protein(text)
    message = str(caught.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize("text, expected", [
    ("p.Arg5Trp", REFERENCE[:4] + "W" + REFERENCE[5:]),
    ("p.Arg5=", REFERENCE),
    ("p.Arg5Ter", REFERENCE[:4]),
    ("p.Gly12_Lys15del", REFERENCE[:11] + REFERENCE[15:]),
    ("p.Gly12_Lys15dup", REFERENCE[:15] + REFERENCE[11:15] + REFERENCE[15:]),
    ("p.Gly12_Ser13insGlnTrp", REFERENCE[:12] + "QW" + REFERENCE[12:]),
    ("p.Cys28delinsTrpVal", REFERENCE[:27] + "WV" + REFERENCE[28:]),
    ("p.Gly12_Ser13insGlnTer", REFERENCE[:12] + "Q"),
    ("p.[Arg5Trp;Gly12del;Cys28Ala]", REFERENCE[:4] + "W" + REFERENCE[5:11] + REFERENCE[12:27] + "A"
     + REFERENCE[28:]),
])
def test_changes_apply(text, expected):
    assert apply_changes(REFERENCE, parse_hgvs_protein(text)[1], "P1") == expected


@pytest.mark.parametrize("text, needle", [
    ("p.Gly5Trp", "residue 5 of P1 is Arg (R), not Gly (G)"),
    ("p.Arg50Trp", "past the end of P1"),
    ("p.[Arg5Trp;Arg5Lys]", "overlap"),
    ("p.[Gly12_Lys15del;Ser13Ala]", "overlap"),
])
def test_changes_that_do_not_fit_the_reference_are_refused(text, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        apply_changes(REFERENCE, parse_hgvs_protein(text)[1], "P1")


def test_table_lines(tmp_path):
    _, table = _files(tmp_path, "id\tvariant\n# a comment\n\nP1\tp.R5W p.G12S\nNP_1.2:p.Arg5Trp\n"
                                "P1  p.Arg5Trp\nP1\tp.R5\nP2\tNP_9:p.R5W\n")
    found = read_variants(table)
    assert [(v.line, v.id, v.problem is None) for v in found] == [
        (4, "P1", True), (5, "NP_1.2", True), (6, "P1", True), (7, "P1", False), (8, "P2", False)]
    assert [c.start for c in found[0].changes] == [5, 12]  # one haplotype, one row
    assert "names NP_9, not P2" in found[4].problem


def test_lines_in_memory_read_as_a_table():
    from synnav_cli.data.variants import variants_from_lines

    found = variants_from_lines(["id variant", "P1 p.R5W p.G12S", "NP_1.2:p.Arg5=", "P1 p.R5"])
    assert [(v.number, v.line, v.id, len(v.changes), v.problem is None) for v in found] == [
        (1, 2, "P1", 2, True), (2, 3, "NP_1.2", 1, True), (3, 4, "P1", 0, False)]
    with pytest.raises(UserError, match="holds no variants"):
        variants_from_lines(["# nothing"])


def test_vcf_with_vep_and_snpeff_annotations(tmp_path):
    vcf = tmp_path / "in.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n"
        '##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
        'Format: Allele|Consequence|Feature|HGVSc|HGVSp">\n'
        "##INFO=<ID=ANN,Number=.,Type=String,Description=\"Functional annotations: 'Allele | "
        "Annotation | Annotation_Impact | Gene_Name | Gene_ID | Feature_Type | Feature_ID | "
        "Transcript_BioType | Rank | HGVS.c | HGVS.p | cDNA.pos / cDNA.length' \">\n"
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        "1\t10\t.\tC\tT\t.\t.\tCSQ=T|missense_variant|ENST1|c.13C>T|ENSP1.2:p.Arg5Trp,"
        "T|missense_variant|ENST2|c.13C>T|ENSP1.2:p.Arg5Trp,T|intron_variant|ENST3||\n"
        "1\t20\t.\tG\tA\t.\t.\tDP=4;ANN=A|synonymous_variant|LOW|G|G1|transcript|ENST9|"
        "protein_coding|2/5|c.15G>A|p.Arg5%3D|15/100\n"
    )
    found = read_variants(vcf)
    assert [(v.id, v.notation, v.problem) for v in found] == [
        ("ENSP1.2", "ENSP1.2:p.Arg5Trp", None), ("ENST9", "p.Arg5=", None)]
    assert found[1].changes[0].kind == "synonymous"


def test_vcf_without_annotations_is_one_line(tmp_path):
    vcf = tmp_path / "in.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "1\t10\t.\tC\tT\t.\t.\tDP=3\n")
    with pytest.raises(UserError, match="without VEP"):
        read_variants(vcf)


# Ranking


def _row(line: int, delta: float | None) -> VariantRow:
    variant = Variant(line, "P1", "p.R5W")
    reference = Prediction("r", 40, np.array([0.5, 0.5]), "ok")
    changed = Prediction("v", 40, None if delta is None else np.array([0.5 + delta, 0.5]), "ok")
    return VariantRow(variant, reference, changed)


def test_sort_by_delta_is_stable():
    rows = [_row(i, d) for i, d in enumerate([0.1, 0.3, -0.3, 0.1, None, 0.3, 0.0])]
    ranked = sort_rows(rows, "delta", [0.5, 0.5])
    assert [r.variant.line for r in ranked] == [1, 2, 5, 0, 3, 6, 4]
    assert sort_rows(rows, "input", [0.5, 0.5]) == rows


# The command


def test_variants_is_in_help(runner):
    result = runner.invoke(cli, ["--help"])
    assert "variants" in result.output
    assert "HGVS" in runner.invoke(cli, ["variants", "--help"]).output


def test_wrong_reference_residue_is_refused_before_scoring(runner, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(variants_module, "load_for_scoring", never)
    fasta, table = _files(tmp_path, "P1\tp.Arg5Trp\nP1\tp.Gly6Trp\nP1\tp.Lys9Trp\n")
    result = runner.invoke(cli, ["variants", str(fasta), str(table), "--device", "cpu"])
    one_error_line(result, "line 2 of", "residue 6 of P1 is I", "not Gly", "2 of 3 variants invalid",
                   "--skip-invalid")
    assert result.stdout == ""


def test_malformed_line_is_refused_in_one_line(runner, tmp_path):
    fasta, table = _files(tmp_path, "P1\tp.Arg5Trp\nP1\tp.Arg5fs\n")
    one_error_line(runner.invoke(cli, ["variants", str(fasta), str(table)]), "line 2", "frameshift")


def test_missing_protein_is_refused(runner, tmp_path):
    fasta, table = _files(tmp_path, "P9\tp.Arg5Trp\n")
    one_error_line(runner.invoke(cli, ["variants", str(fasta), str(table)]), "P9 is not in")


@pytest.mark.parametrize("extra", [[], ["-o", "x.tsv.gz"], ["-o", "x.tsv", "--sort", "delta"]])
def test_shard_needs_a_plain_out_in_input_order(runner, tmp_path, extra):
    fasta, table = _files(tmp_path, "P1\tp.Arg5Trp\n")
    result = runner.invoke(cli, ["variants", str(fasta), str(table), "--shard", "1/2", *extra])
    one_error_line(result, "--shard writes a plain --out file")


def test_rows_no_op_and_each_sequence_scored_once(runner, model_dir, tmp_path, monkeypatch):
    scored: list[str] = []
    real = scoring_module.predict_loaded

    def counting(loaded, records, **options):
        records = list(records)
        scored.extend(r.sequence for r in records)
        return real(loaded, records, **options)

    monkeypatch.setattr(scoring_module, "predict_loaded", counting)
    fasta, table = _files(tmp_path, "P1\tp.Arg5Trp\nP1\tp.Arg5=\nQ2\tp.Q9=\nP1\tp.R5W\nP1\tp.Arg5Ter\n")
    result = runner.invoke(cli, ["variants", str(fasta), str(table), "--model", str(model_dir),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    labels = json.loads((model_dir / "synnav-model.json").read_text())["labels"]
    names = [n.replace(" ", "_") for n in labels]
    assert list(rows[0]) == ["id", "variant", "length", "variant_length",
                             *(f"reference_{n}" for n in names), *(f"variant_{n}" for n in names),
                             *(f"delta_{n}" for n in names), "largest_change", "largest_change_label",
                             "status", "calibration", "nearest_training", "identity", "coverage",
                             "embedding_distance", "domain"]
    # P1, P1 R5W and Q2 (by its UniProt accession): each once; the 4-residue truncation is short.
    assert sorted(scored) == sorted([REFERENCE, REFERENCE[:4] + "W" + REFERENCE[5:], REFERENCE[::-1],
                                     REFERENCE[:4]])
    for no_op in (rows[1], rows[2]):
        assert [float(no_op[f"delta_{n}"]) for n in names] == [0.0] * len(names)
        assert float(no_op["largest_change"]) == 0.0 and no_op["largest_change_label"] == ""
    assert rows[0]["variant"] == "p.Arg5Trp" and rows[0]["status"] == "ok"
    assert rows[0] == {**rows[3], "variant": "p.Arg5Trp"}  # two spellings, one sequence, one score
    assert rows[4]["status"] == "reference ok; variant short" and rows[4]["delta_" + names[0]] == ""

    # The deltas are predict's probabilities of the two sequences, subtracted.
    pair = tmp_path / "pair.fasta"
    pair.write_text(f">ref\n{REFERENCE}\n>mut\n{REFERENCE[:4]}W{REFERENCE[5:]}\n")
    plain = _rows(runner.invoke(cli, ["predict", str(pair), "--model", str(model_dir),
                                      "--device", "cpu"]).stdout)
    deltas = {n: float(plain[1][n]) - float(plain[0][n]) for n in names}
    for n in names:
        assert float(rows[0][f"delta_{n}"]) == pytest.approx(deltas[n], abs=2e-4)
        assert rows[0][f"reference_{n}"] == plain[0][n]
    assert rows[0]["calibration"] == plain[0]["calibration"] and rows[4]["calibration"] == ""
    domain = ["nearest_training", "identity", "coverage", "embedding_distance", "domain"]
    assert [rows[0][c] for c in domain] == [plain[1][c] for c in domain]  # the variant's, as predict
    assert rows[4]["domain"] == "" and rows[2]["domain"] != ""
    largest = max(names, key=lambda n: abs(float(rows[0][f"delta_{n}"])))
    assert rows[0]["largest_change_label"] == largest


def test_skip_invalid_sort_and_formats(runner, model_dir, tmp_path):
    fasta, table = _files(tmp_path, "P1\tp.Arg5=\nP1\tp.Gly5Trp\nP1\tp.Cys28delinsTrpValTrp\n"
                                    "P1\tp.Arg5=\n")
    base = ["variants", str(fasta), str(table), "--model", str(model_dir), "--device", "cpu"]
    one_error_line(runner.invoke(cli, base), "line 2")
    out = tmp_path / "ranked.csv"
    result = runner.invoke(cli, [*base, "--skip-invalid", "--sort", "delta", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 of 4 variants are invalid" in result.stderr
    rows = _rows(out.read_text(), ",")
    assert [r["variant"] for r in rows] == ["p.Cys28delinsTrpValTrp", "p.Arg5=", "p.Arg5=", "p.Gly5Trp"]
    assert rows[-1]["status"].startswith("invalid: residue 5 of P1 is Arg")
    assert rows[0]["variant_length"] == "42" and rows[-1]["length"] == ""
    lines = runner.invoke(cli, [*base, "--skip-invalid", "--format", "jsonl", "--no-domain"]).stdout.splitlines()
    first = json.loads(lines[0])
    assert first["id"] == "P1" and set(first["delta"].values()) == {0.0}
    assert "domain" not in first and list(first)[-1] == "calibration"  # --no-domain: no domain columns
    assert json.loads(lines[1])["delta"] is None


def test_out_resumes_after_an_interruption(runner, model_dir, tmp_path, monkeypatch):
    """-o with input order continues a partial file: the rows written stay, the rest are added,
    and the sequences of the rows done are not scored again."""
    table = "".join(f"P1\tp.{residue}{i + 1}Trp\n" for i, residue in enumerate(REFERENCE[:6])
                    if residue != "W")
    fasta, variants = _files(tmp_path, table)
    base = ["variants", str(fasta), str(variants), "--model", str(model_dir), "--device", "cpu"]
    whole = runner.invoke(cli, base)
    assert whole.exit_code == 0, whole.output

    monkeypatch.setattr(scoring_module, "CHUNK_RECORDS", 2)
    real, scored, calls = scoring_module.predict_loaded, [], []

    def failing_third(loaded, records, **options):
        calls.append(1)
        if len(calls) == 3 and failing:
            raise KeyboardInterrupt
        records = list(records)
        scored.extend(r.sequence for r in records)
        return real(loaded, records, **options)

    monkeypatch.setattr(scoring_module, "predict_loaded", failing_third)
    out = tmp_path / "effects.tsv"
    failing = True
    interrupted = runner.invoke(cli, [*base, "-o", str(out)])
    assert interrupted.exit_code == 130 and not out.exists()
    partial = (tmp_path / "effects.tsv.partial").read_text()
    assert len(partial.splitlines()) == 1 + 4  # the header and two chunks of two
    failing, scored[:] = False, []
    variants.write_text(table.replace("p.M1Trp", "p.M1Lys"))  # another table: refused, not mixed
    one_error_line(runner.invoke(cli, [*base, "-o", str(out)]), "another input")
    variants.write_text(table)
    resumed = runner.invoke(cli, [*base, "-o", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming" in resumed.stderr
    assert out.read_text() == whole.stdout
    assert REFERENCE[:1] + "W" + REFERENCE[2:] not in scored  # row 2's variant: done before
    assert not (tmp_path / "effects.tsv.partial").exists()


# --explain


@pytest.mark.parametrize("text, pairs", [
    ("p.Arg5Trp", [(i, i) for i in range(8)]),
    ("p.Lys2_Ala4del", [(0, 0), (1, None), (2, None), (3, None), (4, 1), (5, 2), (6, 3), (7, 4)]),
    ("p.Lys2_Thr3insGlnGln", [(0, 0), (1, 1), (None, 2), (None, 3), (2, 4), (3, 5), (4, 6), (5, 7),
                              (6, 8), (7, 9)]),
    ("p.Lys2_Thr3dup", [(0, 0), (1, 1), (2, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8),
                        (7, 9)]),
    ("p.Thr3delinsTer", [(0, 0), (1, 1), (2, None), (3, None), (4, None), (5, None),
                         (6, None), (7, None)]),
    ("p.Arg5Ter", [(0, 0), (1, 1), (2, 2), (3, 3), (4, None), (5, None), (6, None), (7, None)]),
])
def test_alignment_through_changes(text, pairs):
    from synnav_cli.predict.variant_explain import align

    reference = REFERENCE[:8]
    changes = parse_hgvs_protein(text)[1]
    variant = apply_changes(reference, changes, "P1")
    found = align(len(reference), len(variant), changes)
    assert found == pairs
    for r, v in found:  # paired residues are the same residue, except at a substitution
        if r is not None and v is not None and not (text == "p.Arg5Trp" and r == 4):
            assert reference[r] == variant[v]


def test_explain_writes_the_attribution_difference_around_the_site(runner, model_dir, tmp_path):
    fasta, table = _files(tmp_path, "P1\tp.Arg5=\nP1\tp.Gly12_Lys15del\n")
    out_dir = tmp_path / "explain"
    result = runner.invoke(cli, ["variants", str(fasta), str(table), "--model", str(model_dir),
                                 "--device", "cpu", "--explain", str(out_dir), "--explain-steps", "4"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out_dir.iterdir()] == ["P1_p.Gly12_Lys15del.tsv"]  # the no-op moved nothing
    row = _rows(result.stdout)[1]
    lines = _rows((out_dir / "P1_p.Gly12_Lys15del.tsv").read_text())
    label = row["largest_change_label"]
    assert list(lines[0]) == ["reference_position", "reference_residue", "variant_position",
                              "variant_residue", f"reference_{label}", f"variant_{label}", "difference"]
    assert [int(r["reference_position"]) for r in lines] == list(range(1, 31))  # 15 either side
    deleted = [r for r in lines if r["variant_position"] == ""]
    assert [int(r["reference_position"]) for r in deleted] == [12, 13, 14, 15]
    for r in lines:
        if r["variant_position"]:
            assert r["reference_residue"] == r["variant_residue"]
            difference = float(r[f"variant_{label}"]) - float(r[f"reference_{label}"])
            assert float(r["difference"]) == pytest.approx(difference, abs=1e-5)
    (tmp_path / "a-file").write_text("")
    refused = runner.invoke(cli, ["variants", str(fasta), str(table), "--explain", str(tmp_path / "a-file")])
    assert refused.exit_code != 0 and "Traceback" not in refused.output


def test_shards_merge_into_the_whole_table(runner, model_dir, tmp_path):
    table = "".join(f"P1\tp.{residue}{i + 1}Ala\n" for i, residue in enumerate(REFERENCE[:7])
                    if residue != "A")
    fasta, variants = _files(tmp_path, table)
    base = ["variants", str(fasta), str(variants), "--model", str(model_dir), "--device", "cpu"]
    whole = runner.invoke(cli, base)
    parts = [tmp_path / f"part-{i}.tsv" for i in (1, 2, 3)]
    for i, part in enumerate(parts, 1):
        result = runner.invoke(cli, [*base, "--shard", f"{i}/3", "-o", str(part)])
        assert result.exit_code == 0, result.output
    assert len(_rows(parts[0].read_text())) == 2 and len(_rows(parts[2].read_text())) == 1
    merged = runner.invoke(cli, ["merge", *map(str, parts), "-o", str(tmp_path / "all.tsv")])
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "all.tsv").read_text() == whole.stdout
    one_error_line(runner.invoke(cli, ["merge", str(parts[0]), str(parts[2])]), "missing")


def test_several_variants_from_one_vcf_line_keep_their_own_sequences(runner, model_dir, tmp_path):
    fasta, _ = _files(tmp_path, "")
    vcf = tmp_path / "in.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n"
        '##INFO=<ID=CSQ,Number=.,Type=String,Description="Format: Allele|Feature|HGVSp">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        "1\t10\t.\tC\tT,G\t.\t.\tCSQ=T|ENST1|P1:p.Arg5Trp,G|ENST1|P1:p.Arg5=\n"
    )
    result = runner.invoke(cli, ["variants", str(fasta), str(vcf), "--model", str(model_dir),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert [r["variant"] for r in rows] == ["P1:p.Arg5Trp", "P1:p.Arg5="]
    assert rows[0]["largest_change"] != "+0.0000" and rows[1]["largest_change"] == "+0.0000"


def test_a_reference_is_scored_once_across_chunks(runner, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_module, "CHUNK_RECORDS", 2)
    real, scored = scoring_module.predict_loaded, []

    def counting(loaded, records, **options):
        records = list(records)
        scored.extend(r.sequence for r in records)
        return real(loaded, records, **options)

    monkeypatch.setattr(scoring_module, "predict_loaded", counting)
    fasta, table = _files(tmp_path, "P1\tp.R5W\nP1\tp.R5=\nP1\tp.K2W\nP1\tp.R5W\nP1\tp.T3W\n")
    result = runner.invoke(cli, ["variants", str(fasta), str(table), "--model", str(model_dir),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert scored.count(REFERENCE) == 1
    assert len(scored) == 5  # P1, R5W; K2W, R5W again (another chunk); T3W
    variants = read_variants(table)
    references = scoring_module.check_variants(variants, read_fasta(fasta), "ref.fasta")
    assert scoring_module.count_sequences(variants, references) == len(scored)  # the progress total
    rows = _rows(result.stdout)
    assert rows[0] == {**rows[3]}  # a repeat scored in another chunk gives the same row


def test_probabilities_are_predicts_with_a_calibrated_model(runner, model_dir, tmp_path):
    calibrated = tmp_path / "calibrated"
    # Every protein in dev: enough of each class for the fit (calibration.MIN_CLASS).
    records = [{**r, "split": "dev"} for r in json.loads((DATA / "small.json").read_text())]
    (tmp_path / "d.json").write_text(json.dumps(records))
    fitted = runner.invoke(cli, ["calibrate", "--model", str(model_dir), "--data", str(tmp_path / "d.json"),
                                 "--out", str(calibrated), "--method", "temperature", "--device", "cpu"])
    assert fitted.exit_code == 0, fitted.output
    fasta, table = _files(tmp_path, "P1\tp.Arg5Trp\n")
    result = runner.invoke(cli, ["variants", str(fasta), str(table), "--model", str(calibrated),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    row = _rows(result.stdout)[0]
    plain = _rows(runner.invoke(cli, ["predict", str(fasta), "--model", str(calibrated),
                                      "--device", "cpu"]).stdout)[0]
    assert plain["calibration"].startswith("calibrated") and row["calibration"] == plain["calibration"]
    labels = json.loads((calibrated / "synnav-model.json").read_text())["labels"]
    names = [n.replace(" ", "_") for n in labels]
    assert [row[f"reference_{n}"] for n in names] == [plain[n] for n in names]


def test_variant_table_in_memory_matches_the_command(runner, model_dir, tmp_path):
    from synnav_cli.data.variants import variants_from_lines
    from synnav_cli.scoring.load import load_for_scoring

    fasta, table = _files(tmp_path, "P1\tp.Arg5=\nP1\tp.Cys28delinsTrpValTrp\nP1\tp.Gly5Trp\n")
    command = _rows(runner.invoke(cli, ["variants", str(fasta), str(table), "--model", str(model_dir),
                                        "--device", "cpu", "--skip-invalid", "--sort", "delta"]).stdout)
    loaded = load_for_scoring(str(model_dir), device="cpu")
    variants = variants_from_lines(table.read_text().splitlines())
    columns, rows = scoring_module.variant_table(loaded, variants, read_fasta(fasta, keep_invalid=True),
                                                  skip_invalid=True, sort="delta")
    assert columns == list(command[0])
    for values, row in zip(rows, command, strict=True):
        assert [("" if v is None else v) for v in values[:2]] == [row["id"], row["variant"]]
        for name, value in zip(columns, values):
            if isinstance(value, float):
                assert value == pytest.approx(float(row[name]), abs=1e-4), name
            else:
                assert ("" if value is None else str(value)) == row[name], name
    with pytest.raises(UserError, match="line 3 of the variants"):
        scoring_module.variant_table(loaded, variants_from_lines(table.read_text().splitlines()),
                                      read_fasta(fasta))


def test_python_api_twin_gives_the_command_s_table(runner, model_dir, tmp_path):
    from synnav_cli import load_model

    fasta, table = _files(tmp_path, "P1\tp.Arg5=\nP1\tp.Cys28delinsTrpValTrp\nP1\tp.Gly5Trp\n")
    command = _rows(runner.invoke(cli, ["variants", str(fasta), str(table), "--model", str(model_dir),
                                        "--device", "cpu", "--skip-invalid", "--sort", "delta"]).stdout)
    model = load_model(str(model_dir), device="cpu")
    frame = model.variants(str(fasta), str(table), skip_invalid=True, sort="delta")
    assert list(frame.columns) == list(command[0])
    assert list(frame["variant"]) == [r["variant"] for r in command]
    assert list(frame["delta_ER"].fillna(-9)) == pytest.approx(
        [float(r["delta_ER"]) if r["delta_ER"] else -9 for r in command], abs=1e-4)
    in_memory = model.variants({"P1": REFERENCE}, ["P1 p.Arg5=", "P1 p.R5W"])
    assert list(in_memory["largest_change"])[0] == 0.0 and len(in_memory) == 2
    with pytest.raises(SynnavError, match="line 1 of the variants"):
        model.variants({"P1": REFERENCE}, ["P1 p.Gly5Trp"])
