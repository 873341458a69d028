"""Sharing models through the Hugging Face Hub: ``push`` (check, card, upload), ``pull`` (fetch,
check, register) and ``hf:ORG/NAME[@REV]`` model names; ``files`` holds the checks both share."""
