"""Build the offline tiny Qwen3 (real Qwen3 vocabulary, random weights) used by tests and the demo.

    python scripts/make_tiny_model.py --out_dir ckpt/tiny-qwen3

Takes a few seconds, needs no network, and gives the same files for the same --seed.
"""

import argparse
import sys
import time

from siren.cli import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="ckpt/tiny-qwen3", help="where to write the model (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: %(default)s)")
    args = parser.parse_args()

    from siren.tiny_model import build_tiny_qwen3

    start = time.perf_counter()
    out = build_tiny_qwen3(args.out_dir, seed=args.seed)
    print(f"wrote tiny Qwen3 (tokenizer, chat template, random weights) to {out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
