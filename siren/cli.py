"""Small helpers every stage script uses for its command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from siren import SirenError


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value. `type=bool` would read the string "False" as True."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "t", "yes", "y", "on"}:
        return True
    if lowered in {"0", "false", "f", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def run_main(main: Callable[[], object]) -> int:
    """Run a script's main(); a SirenError becomes a one-line message and exit status 2."""
    try:
        main()
    except SirenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
