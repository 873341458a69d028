"""GO-derived labels for the four HOU compartments (issue 10's optional item; opt-in).

Used by ``scripts/build_dataset.py --go-compartments`` (for training proteins HOU does not
label) and by benchmarks/go_compartments.py, which measures the rule against HOU where both
exist. Every value made here is marked in the record's ``evidence`` field as lower-confidence.

Positive: a direct GO cellular-component term of the compartment or one of its named parts
(tables below; each id's name is checked against cc_ic.json, as there is no ontology file to
walk). Negative (``located`` rule, the default): no term of the compartment, and at least one
term that places the protein somewhere else that HOU also records (one of the other three
compartments, plasma membrane, Golgi, vesicles/endosomes/lysosomes/peroxisomes/lipid droplets,
cytoskeleton). Terms that place a protein nowhere in particular ("cytoplasm", "membrane",
"extracellular exosome", "protein-containing complex", synapse terms) neither make nor break a
negative: "cytoplasm" without "cytosol" says nothing against cytosol. GO CC is incomplete, so
an absence stays weak evidence. Other rules, kept for measuring: ``any`` (any annotation at all
makes the negatives), ``positives-only`` (no negatives) and ``negatives-only`` (the ``located``
negatives, no positives: against HOU, GO's positives are the noisier half).
"""

from __future__ import annotations

import re

COMPARTMENTS = ("cytosol", "ER", "mitochondrion", "nucleus")
SOURCE = "GO-CC (lower confidence)"
RULES = ("located", "any", "positives-only", "negatives-only")

# The compartment and its parts. Left out on purpose: contact sites and intermediate
# compartments that name two places (ERGIC, MAM), "perinuclear region of cytoplasm", the signal
# recognition particle (cytosolic, named after ER targeting), and mitotic structures
# (kinetochore, condensed chromosome) that exist when there is no nuclear envelope.
GO_TERMS: dict[str, dict[str, str]] = {
    "cytosol": {
        "GO:0005829": "cytosol",
        "GO:0099523": "presynaptic cytosol",
        "GO:0099524": "postsynaptic cytosol",
        "GO:0022626": "cytosolic ribosome",
        "GO:0022625": "cytosolic large ribosomal subunit",
        "GO:0022627": "cytosolic small ribosomal subunit",
    },
    "ER": {
        "GO:0005783": "endoplasmic reticulum",
        "GO:0005789": "endoplasmic reticulum membrane",
        "GO:0005788": "endoplasmic reticulum lumen",
        "GO:0005791": "rough endoplasmic reticulum",
        "GO:0030867": "rough endoplasmic reticulum membrane",
        "GO:0005790": "smooth endoplasmic reticulum",
        "GO:0030868": "smooth endoplasmic reticulum membrane",
        "GO:0071782": "endoplasmic reticulum tubular network",
        "GO:0032541": "cortical endoplasmic reticulum",
        "GO:0097038": "perinuclear endoplasmic reticulum",
        "GO:0044322": "endoplasmic reticulum quality control compartment",
        "GO:0098553": "lumenal side of endoplasmic reticulum membrane",
        "GO:0098554": "cytoplasmic side of endoplasmic reticulum membrane",
        "GO:0034663": "endoplasmic reticulum chaperone complex",
        "GO:0016529": "sarcoplasmic reticulum",
        "GO:0033017": "sarcoplasmic reticulum membrane",
        "GO:0033018": "sarcoplasmic reticulum lumen",
        "GO:0014701": "junctional sarcoplasmic reticulum membrane",
    },
    "mitochondrion": {
        "GO:0005739": "mitochondrion",
        "GO:0031966": "mitochondrial membrane",
        "GO:0005740": "mitochondrial envelope",
        "GO:0005743": "mitochondrial inner membrane",
        "GO:0005741": "mitochondrial outer membrane",
        "GO:0005758": "mitochondrial intermembrane space",
        "GO:0005759": "mitochondrial matrix",
        "GO:0042645": "mitochondrial nucleoid",
        "GO:0030061": "mitochondrial crista",
        "GO:0005761": "mitochondrial ribosome",
        "GO:0005762": "mitochondrial large ribosomal subunit",
        "GO:0005763": "mitochondrial small ribosomal subunit",
        "GO:0099617": "matrix side of mitochondrial inner membrane",
        "GO:0031314": "extrinsic component of mitochondrial inner membrane",
        "GO:0032473": "cytoplasmic side of mitochondrial outer membrane",
        "GO:0005744": "TIM23 mitochondrial import inner membrane translocase complex",
        "GO:0042721": "TIM22 mitochondrial import inner membrane insertion complex",
        "GO:0005742": "mitochondrial outer membrane translocase complex",
    },
    "nucleus": {
        "GO:0005634": "nucleus",
        "GO:0005654": "nucleoplasm",
        "GO:0005730": "nucleolus",
        "GO:0001650": "fibrillar center",
        "GO:0005635": "nuclear envelope",
        "GO:0031965": "nuclear membrane",
        "GO:0005637": "nuclear inner membrane",
        "GO:0005640": "nuclear outer membrane",
        "GO:0005652": "nuclear lamina",
        "GO:0005643": "nuclear pore",
        "GO:0016607": "nuclear speck",
        "GO:0016604": "nuclear body",
        "GO:0015030": "Cajal body",
        "GO:0016605": "PML body",
        "GO:0016363": "nuclear matrix",
        "GO:0031981": "nuclear lumen",
        "GO:0034399": "nuclear periphery",
        "GO:0000785": "chromatin",
        "GO:0000791": "euchromatin",
        "GO:0000792": "heterochromatin",
        "GO:0000786": "nucleosome",
        "GO:0000228": "nuclear chromosome",
    },
}
# Other places HOU records (level2: plasma membrane, Golgi, vesicles, cytoskeleton), by name.
ELSEWHERE = re.compile(
    r"plasma membrane|golgi|endosom|lysosom|peroxisom|lipid droplet|vesicle|cytoskelet|"
    r"actin filament|microtubule|centrosome|centriole|intermediate filament",
    re.IGNORECASE,
)


def check_names(names: dict[str, str]) -> None:
    """Every id in the tables must name the term it claims in cc_ic.json (ids are typed by hand)."""
    for label, terms in GO_TERMS.items():
        for term, name in terms.items():
            if names.get(term) != name:
                found = names.get(term)
                raise SystemExit(f"{label}: {term} is {found!r} in cc_ic.json, not {name!r}")


def compartment_labels(
    terms: set[str], names: dict[str, str], rule: str = "located"
) -> tuple[dict[str, int | None], dict[str, list[str]]]:
    """GO-derived value (1, 0 or None) per compartment, and the evidence for each value made."""
    found = {label: sorted(t for t in terms if t in GO_TERMS[label]) for label in COMPARTMENTS}
    elsewhere = sorted(t for t in terms if ELSEWHERE.search(names.get(t, "")))
    labels: dict[str, int | None] = {}
    evidence: dict[str, list[str]] = {}
    for label in COMPARTMENTS:
        if found[label] and rule != "negatives-only":
            labels[label] = 1
            evidence[label] = [SOURCE] + [f"{t} {names[t]}" for t in found[label]]
            continue
        if found[label]:
            labels[label] = None  # negatives-only: a GO positive is neither 1 nor 0
            continue
        others = sorted({t for o in COMPARTMENTS if o != label for t in found[o]} | set(elsewhere))
        negative = (rule == "any" and bool(terms)) or (
            rule in ("located", "negatives-only") and bool(others)
        )
        labels[label] = 0 if negative else None
        if negative:
            shown = others or sorted(terms)
            evidence[label] = [f"{SOURCE}: not annotated here; annotated to"] + [
                f"{t} {names.get(t, '')}".strip() for t in shown
            ]
    return labels, evidence
