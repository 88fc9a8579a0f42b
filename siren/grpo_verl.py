r"""Stage 3, verl backend: what main_grpo_amazon.sh runs on verl's merged checkpoint before renaming it.

    python -m siren.grpo_verl ckpt/.GRPO_Movies_step20.partial backend=verl step=20 lora_rank=0 \
        data_dir=data/Movies/verl/max@10-long@True

The first argument is the folder `python -m verl.model_merger merge` wrote; the rest are the
launcher's settings as key=value, recorded in its manifest.json. For a LoRA run, verl 0.9.1's
merger (`save_lora_adapter` in verl/model_merger/base_model_merger.py) saves the adapter to
`lora_adapter/` and the base weights, unmerged, beside it; stages 4-6 load the folder with
AutoModelForCausalLM and would silently read the base model. So the adapter is folded into the
weights here (peft `merge_and_unload`, in float32, saved back in the folder's dtype) and
`lora_adapter/` is removed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from siren import SirenError
from siren.cli import run_main

LORA_ADAPTER_DIR = "lora_adapter"  # verl's name, inside the merger's --target_dir


def merge_lora_adapter(model_dir: str | Path) -> dict | None:
    """Fold `<model_dir>/lora_adapter` into the weights of `<model_dir>`; None when there is no adapter.

    Returns the adapter's rank, alpha and target modules.
    """
    model_dir = Path(model_dir)
    adapter_dir = model_dir / LORA_ADAPTER_DIR
    if not adapter_dir.is_dir():
        return None
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    # verl's merger falls back to lora_alpha=0 (scaling 0: the adapter would change nothing) when
    # the checkpoint lacks lora_train_meta.json.
    if not adapter_config.get("lora_alpha"):
        raise SirenError(f"{adapter_dir}/adapter_config.json has lora_alpha={adapter_config.get('lora_alpha')!r} "
                         "(verl found no lora_train_meta.json in the checkpoint); merging it would change nothing")

    from siren.lora_merge import merge_lora_float32

    merged = merge_lora_float32(model_dir, adapter_dir)
    # Remove the old weight files before writing new ones: they may still be memory-mapped.
    for old in [*model_dir.glob("*.safetensors"), *model_dir.glob("*.safetensors.index.json")]:
        old.unlink()
    merged.save_pretrained(model_dir)
    shutil.rmtree(adapter_dir)
    return {"r": adapter_config.get("r"), "lora_alpha": adapter_config["lora_alpha"],
            "target_modules": sorted(adapter_config.get("target_modules") or [])}


def main(argv: list[str] | None = None) -> None:
    from siren.io import write_manifest

    argv = sys.argv[1:] if argv is None else argv
    if not argv or any("=" not in arg for arg in argv[1:]):
        raise SirenError("usage: python -m siren.grpo_verl MERGED_DIR key=value ...")
    out = Path(argv[0])
    settings = dict(arg.split("=", 1) for arg in argv[1:])
    if not (out / "config.json").is_file():
        raise SirenError(f"{out} is not a model folder (no config.json): did verl's model merger fail?")
    lora_rank = int(settings.get("lora_rank", "0") or 0)
    merged_lora = merge_lora_adapter(out)
    if lora_rank > 0 and merged_lora is None:
        raise SirenError(f"LORA_RANK={lora_rank} but verl's merger wrote no {out / LORA_ADAPTER_DIR}: "
                         "the folder would hold the untrained base weights")
    if merged_lora is not None:
        print(f"merged the LoRA adapter (r={merged_lora['r']}, alpha={merged_lora['lora_alpha']}, "
              f"{', '.join(merged_lora['target_modules'])}) into {out}")
    data_dir = settings.get("data_dir", "")
    write_manifest(out, script="main_grpo_amazon.sh", args=settings, outputs=[out],
                   inputs=[f"{data_dir}/train.parquet", f"{data_dir}/val.parquet"] if data_dir else [],
                   extra={"lora_merged": merged_lora})


if __name__ == "__main__":
    sys.exit(run_main(main))
