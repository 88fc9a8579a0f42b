"""The frame of a CPU benchmark script that writes one JSON file (scripts/bench_ao_flops.py,
scripts/bench_decode.py): its shared flags, the output folder checked before anything loads,
the torch thread count, and the file written with its manifest."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from siren import cli
from siren.cli import positive_int


def add_flags(parser: argparse.ArgumentParser, output_name: str, default_dir: str) -> None:
    """--dtype (one or more), --threads, --output_dir, --overwrite."""
    parser.add_argument("--dtype", nargs="+", dest="dtypes", choices=("float32", "bfloat16"), default=["float32"],
                        help="model (and matmul) dtypes, each measured in turn")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (unset: torch's default)")
    cli.add_output_dir(parser, f"where {output_name} goes", default=default_dir)
    cli.add_overwrite(parser)


def run(args: argparse.Namespace, script: str, output_name: str, measure: Callable[[argparse.Namespace], dict],
        counts: Callable[[dict], dict]) -> dict:
    """Check the output folder (before anything loads), set --threads, measure, and write
    <output_dir>/<output_name> and the manifest together; returns the report."""
    from siren.io import RunTimer, atomic_write_json
    from siren.outputs import StageOutputs

    outputs = StageOutputs(args.output_dir, [output_name], script=script, inputs=[args.model, args.data_path],
                           overwrite=args.overwrite).check()
    timer = RunTimer()
    with outputs.claimed():
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        report = measure(args)
        with outputs.commit(args, timer) as staged:
            atomic_write_json(staged.path(output_name), report)
            staged.record(counts=counts(report))
    print(f"wrote {outputs.folder / output_name} in {timer.seconds:.1f}s")
    return report
