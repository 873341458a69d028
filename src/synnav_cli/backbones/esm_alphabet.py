"""The ESM vocabulary, shared by ESM2 and ESM C (same ids for the first 33 tokens)."""

from synnav_cli.backbones.base import Vocabulary

ESM_TOKENS = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H",
    "W", "C", "X", "B", "U", "Z", "O", ".", "-", "|", "<mask>",
)  # fmt: skip

ESM_VOCABULARY = Vocabulary(ESM_TOKENS, pad="<pad>", unk="<unk>", cls="<cls>", eos="<eos>")
