r"""Build the offline tiny Qwen3 (real Qwen3 vocabulary, random weights) used by tests and the demo.

    python scripts/make_tiny_model.py --output_dir ckpt/tiny-qwen3

Takes a few seconds, needs no network, and gives the same files for the same --seed.
"""

import sys
import time

from siren import cli
from siren.cli import run_main


def main() -> None:
    parser = cli.stage_parser(__doc__)
    cli.add_output_dir(parser, "where to write the model", default="ckpt/tiny-qwen3")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    args = parser.parse_args()

    from siren.tools.tiny_model import build_tiny_qwen3

    start = time.perf_counter()
    out = build_tiny_qwen3(args.output_dir, seed=args.seed)
    print(f"wrote tiny Qwen3 (tokenizer, chat template, random weights) to {out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
