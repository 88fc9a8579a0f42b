"""Peak resident memory of one stage run, for the benchmarks (scripts/bench_hidden.py,
scripts/bench_build_category.py); no stage measures its own memory.

    python -m siren.tools.peak_memory --report peak.json [--split_at_model_load] -- SCRIPT [ARG ...]

Runs SCRIPT as `__main__` in this process and, however it ends, writes {"peak_rss_mb": ...} to
--report: the process's own high-water mark (VmHWM; the ru_maxrss of a child process would also
count what its parent held when it forked). --split_at_model_load also takes the peak when
siren.modeling.load_causal_lm returns and resets the counter there (/proc/self/clear_refs), so the
report holds the peak of loading the model and, separately, of what follows
("peak_rss_mb_after_model_load": null where the kernel's counter cannot be reset).
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (since reset_peak_rss, where that worked)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where the system does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def split_at_model_load(report: dict) -> None:
    """Record the peak when siren.modeling.load_causal_lm returns and reset the counter there."""
    import siren.modeling

    load = siren.modeling.load_causal_lm

    def load_then_reset(*args, **kwargs):
        model = load(*args, **kwargs)
        report["peak_rss_mb_model_loaded"] = round(peak_rss_mb(), 1)
        report["counter_reset"] = reset_peak_rss()
        return model

    siren.modeling.load_causal_lm = load_then_reset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", required=True, type=Path, help="JSON file the peaks are written to")
    parser.add_argument("--split_at_model_load", action="store_true",
                        help="report the model load's peak and the peak after it separately")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARG ...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the script to run after --")
    report: dict = {}
    if args.split_at_model_load:
        split_at_model_load(report)
    sys.argv = list(command)
    try:
        runpy.run_path(command[0], run_name="__main__")
    finally:
        peak = round(peak_rss_mb(), 1)
        if args.split_at_model_load:
            report["peak_rss_mb_after_model_load"] = peak if report.pop("counter_reset", False) else None
            peak = max(peak, report.get("peak_rss_mb_model_loaded", 0.0))
        report["peak_rss_mb"] = peak
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
