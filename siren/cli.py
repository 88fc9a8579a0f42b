"""Small helpers every stage script uses for its command line and its process."""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while importing a framework or loading a model.

    Importing torch + transformers creates about half a million long-lived objects, and every
    full collection the import triggers scans all of them again: on 2 cores that is about 1.2 s of
    a 7 s import + MiniLM load. Nothing created there is cyclic garbage worth collecting early,
    and the collector is back on (with everything still collectable) when the block ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_FAST_EXIT_REGISTERED = False


def _freeze_heap_at_exit() -> None:
    # Registered before main() imports anything heavy, so it runs after the exit handlers those
    # imports add: what remains is interpreter shutdown, whose collections of the frozen heap
    # (~1.3 s with torch loaded) are skipped. Outputs are written and closed before main() returns.
    gc.freeze()


def run_main(main: Callable[[], object]) -> int:
    """Run a script's main(); a SirenError becomes a one-line message and exit status 2."""
    global _FAST_EXIT_REGISTERED
    if not _FAST_EXIT_REGISTERED:
        atexit.register(_freeze_heap_at_exit)
        _FAST_EXIT_REGISTERED = True
    try:
        main()
    except SirenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
