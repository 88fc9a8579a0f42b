"""Shared logic of the SIREN stage scripts.

Each top-level script parses its flags, validates its inputs and calls into this package:
prompts (`siren.prompts`), answer parsing (`siren.answer`), the GRPO reward (`siren.reward`),
metrics (`siren.metrics`), data loading (`siren.data`), tokenizer helpers (`siren.tokenization`)
and atomic output + manifests (`siren.io`).
"""

__version__ = "0.1.0"


class SirenError(Exception):
    """An error the user can fix (bad input, missing file). Scripts print it as one line and exit 2."""
