r"""Stage 3, verl backend: what main_grpo_amazon.sh runs around `python -m verl.trainer.main_ppo`.

    python -m siren.grpo_verl plan --batch_size 32 --offload auto --dry_run \
        --launcher algorithm.adv_estimator=grpo ... --user actor_rollout_ref.rollout.temperature=0.9
    python -m siren.grpo_verl latest --trainer_dir ckpt/verl/siren_grpo/GRPO_Movies --output_dir ckpt --data_name Movies
    python -m siren.grpo_verl finish ckpt/.GRPO_Movies_step20.partial backend=verl step=20 lora_rank=0

`plan` composes the config exactly as main_ppo does (Hydra, verl's own config module and the same
overrides), checks what Hydra and verl leave unchecked (the type and range of the launcher's
numbers, VAL_BEFORE_TRAIN, LOGGER, inputs, batch divisibility over every GPU of every node, an old
checkpoint), adds data.train_batch_size = BATCH_SIZE x every GPU and the offload keys it chooses from
siren.grpo_memory's estimate (printed), and runs verl's `validate_config` on the result. It prints
the added overrides for the launcher, or with --dry_run the composed config (what `main_ppo --cfg
job` prints). `latest` finds the checkpoint to merge and checks that every rank's shard is there.
`finish` runs on the folder `python -m verl.model_merger merge` wrote: for a LoRA run, verl 0.9.1's
merger (`save_lora_adapter` in verl/model_merger/base_model_merger.py) saves the adapter to
`lora_adapter/` beside the unmerged base weights, which stages 4-6 would load as the untrained
model, so the adapter is folded into the weights (peft `merge_and_unload` in float32, saved back in
the folder's dtype) and `lora_adapter/` removed; then the manifest is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import sys
import warnings
from pathlib import Path

from siren import SirenError
from siren.cli import run_main

LORA_ADAPTER_DIR = "lora_adapter"  # verl's name, inside the merger's --target_dir
LATEST_FILE = "latest_checkpointed_iteration.txt"  # verl's, in trainer.default_local_dir
# The composed keys the launcher sets from its settings: messages name the setting a user gave.
SETTING_OF_KEY = {
    "data.max_prompt_length": "MAX_PROMPT_LENGTH", "data.max_response_length": "MAX_RESPONSE_LENGTH",
    "trainer.total_epochs": "EPOCHS", "trainer.total_training_steps": "MAX_STEPS", "trainer.save_freq": "SAVE_FREQ",
    "trainer.test_freq": "TEST_FREQ", "trainer.val_before_train": "VAL_BEFORE_TRAIN", "trainer.logger": "LOGGER",
    "trainer.n_gpus_per_node": "NUM_GPUS", "trainer.nnodes": "NNODES", "trainer.resume_mode": "RESUME_MODE",
    "trainer.max_actor_ckpt_to_keep": "KEEP_CHECKPOINTS", "actor_rollout_ref.rollout.n": "ROLLOUT_N",
    "actor_rollout_ref.rollout.gpu_memory_utilization": "GPU_MEMORY_UTILIZATION",
    "actor_rollout_ref.actor.optim.lr": "LR", "actor_rollout_ref.actor.kl_loss_coef": "KL_COEF",
    "actor_rollout_ref.model.lora_rank": "LORA_RANK", "actor_rollout_ref.model.lora_alpha": "LORA_ALPHA",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": "MICRO_BATCH_SIZE",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": "MICRO_BATCH_SIZE",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": "MICRO_BATCH_SIZE",
    "actor_rollout_ref.model.path": "MODEL_PATH", "data.train_files": "DATA_DIR", "data.val_files": "DATA_DIR",
}
# Ranges of the numbers Hydra passes through untyped (verl's dataclasses type some, range none).
WHOLE_NUMBER_AT_LEAST = {
    "data.max_prompt_length": 1, "data.max_response_length": 1, "trainer.total_epochs": 1,
    "trainer.n_gpus_per_node": 1, "trainer.nnodes": 1, "trainer.test_freq": 0, "trainer.max_actor_ckpt_to_keep": 1,
    # the launcher merges the last checkpoint, so a run must save one
    "trainer.save_freq": 1, "actor_rollout_ref.rollout.n": 2,  # GRPO compares the responses within a group
    "actor_rollout_ref.model.lora_rank": 0, "actor_rollout_ref.model.lora_alpha": 1,
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1,
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 1,
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 1,
}
PLANNED_KEYS = ("data.train_batch_size", "actor_rollout_ref.actor.ppo_mini_batch_size",
                "actor_rollout_ref.actor.fsdp_config.param_offload",
                "actor_rollout_ref.actor.fsdp_config.optimizer_offload")


def _name(key: str) -> str:
    setting = SETTING_OF_KEY.get(key)
    return f"{setting} ({key})" if setting else key


def _get(config, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(config, key)


def override_key(override: str) -> str:
    """`++a.b=1`, `+a.b=1`, `~a.b` -> `a.b`."""
    return override.lstrip("+~").split("=", 1)[0]


def compose(overrides: list[str]):
    """verl's ppo_trainer config with `overrides`, composed by Hydra as `python -m verl.trainer.main_ppo` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module="verl.trainer.config", version_base=None):
            return hydra_compose(config_name="ppo_trainer", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise SirenError(f"verl's config rejects the overrides: {' '.join(str(err).split())}") from None


def check_composed(config, dry_run: bool) -> None:
    """What Hydra and verl do not check before Ray starts, in one-line errors naming the setting."""
    for key, minimum in WHOLE_NUMBER_AT_LEAST.items():
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SirenError(f"{_name(key)} must be a whole number >= {minimum}, got {value!r}")
    steps = _get(config, "trainer.total_training_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise SirenError(f"{_name('trainer.total_training_steps')} must be a whole number >= 1 (or 0 for the "
                         f"whole EPOCHS), got {steps!r}")
    for key, low, high, low_open in (("actor_rollout_ref.actor.optim.lr", 0.0, math.inf, True),
                                     ("actor_rollout_ref.actor.kl_loss_coef", 0.0, math.inf, False),
                                     ("actor_rollout_ref.rollout.gpu_memory_utilization", 0.0, 1.0, True)):
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (low_open and value == low) or value > high:
            bounds = f"in ({low:g}, {high:g}]" if high != math.inf else ("> 0" if low_open else ">= 0")
            raise SirenError(f"{_name(key)} must be a finite number {bounds}, got {value!r}")
    if not isinstance(_get(config, "trainer.val_before_train"), bool):
        raise SirenError(f"{_name('trainer.val_before_train')} must be True or False, got "
                         f"{_get(config, 'trainer.val_before_train')!r}")
    _check_logger(_get(config, "trainer.logger"))
    _check_inputs(config)
    _check_resume(config, dry_run)


def _check_logger(logger) -> None:
    from omegaconf import ListConfig
    from verl.utils.tracking import Tracking

    backends = list(logger) if isinstance(logger, (list, ListConfig)) else [logger]
    unknown = [name for name in backends if name not in Tracking.supported_backend]
    if unknown or not backends:
        raise SirenError(f"{_name('trainer.logger')}: unknown logger {', '.join(map(repr, unknown)) or '(none)'}; "
                         f"verl knows {', '.join(Tracking.supported_backend)} (e.g. LOGGER=console,wandb)")


def check_data_dir_manifest(config, named_by: list[str]) -> None:
    """DATA_DIR is stage 2's folder (its manifest.json says so), and CATEGORY, MAX_HISTORY or
    USE_LONG_HISTORY given with it (`NAME=value`) are what it was made with (`check_input_manifest`)."""
    from argparse import ArgumentTypeError

    from siren.cli import str2bool
    from siren.manifest import check_input_manifest

    expect = {}
    for setting in named_by:
        name, _, value = setting.partition("=")
        try:
            asked = str2bool(value) if name == "USE_LONG_HISTORY" else int(value) if name == "MAX_HISTORY" else value
        except (ValueError, ArgumentTypeError) as err:
            raise SirenError(f"{name} must be {'true or false' if name == 'USE_LONG_HISTORY' else 'a whole number'}, "
                             f"got {value!r} ({err})") from None
        expect[name.lower()] = (asked, name)
    train = _get(config, "data.train_files")
    train = train if isinstance(train, str) else list(train)[0]
    check_input_manifest(Path(str(train)).parent, made_by="preprocess_grpo.py", flag="DATA_DIR", expect=expect)


def _check_inputs(config) -> None:
    model = Path(str(_get(config, "actor_rollout_ref.model.path")))
    if not (model / "config.json").is_file():
        raise SirenError(f"MODEL_PATH={model} is not a model folder (no config.json)")
    for key in ("data.train_files", "data.val_files"):
        files = _get(config, key)
        for path in [files] if isinstance(files, str) else list(files):
            if not Path(path).is_file():
                raise SirenError(f"missing parquet split: {path} (run preprocess_grpo.py first)")


def _check_resume(config, dry_run: bool) -> None:
    mode = _get(config, "trainer.resume_mode")
    if mode not in ("disable", "auto", "resume_path"):
        raise SirenError(f"{_name('trainer.resume_mode')} must be disable, auto or resume_path, got {mode!r}")
    resume_from = _get(config, "trainer.resume_from_path")
    if mode == "resume_path" and "global_step_" not in str(resume_from or ""):
        raise SirenError(f"RESUME_MODE=resume_path needs RESUME_FROM_PATH=<TRAINER_DIR>/global_step_S, got "
                         f"{resume_from!r}")
    # resume_mode=disable trains from scratch into the same folder, and a run that stops before its first
    # save would leave the old step to be merged.
    latest = Path(str(_get(config, "trainer.default_local_dir"))) / LATEST_FILE
    if mode == "disable" and not dry_run and latest.is_file():
        raise SirenError(f"TRAINER_DIR={latest.parent} already holds a verl checkpoint (step "
                         f"{latest.read_text().strip()}): set RESUME_MODE=auto to resume it, or choose another "
                         "TRAINER_DIR")


def check_batches(config, batch_size: int) -> tuple[int, int]:
    """(every GPU of every node, sequences per GPU per step); refuses batches verl's workers would
    refuse on the GPUs. verl's *_micro_batch_size_per_gpu count sequences after the x n rollout
    expansion: BATCH_SIZE prompts x ROLLOUT_N responses per GPU must split into whole micro batches."""
    gpus = _get(config, "trainer.n_gpus_per_node") * _get(config, "trainer.nnodes")
    rollout_n = _get(config, "actor_rollout_ref.rollout.n")
    sequences = batch_size * rollout_n
    for key in ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"):
        micro = _get(config, key)
        if sequences % micro:
            raise SirenError(f"BATCH_SIZE x ROLLOUT_N = {batch_size} x {rollout_n} = {sequences} sequences per GPU "
                             f"must be a multiple of {_name(key)} = {micro} (it counts sequences, not prompts)")
    return gpus, sequences


def plan_settings(batch_size: str, offload: str, gpu_memory_gib: str) -> tuple[int, str, float | None]:
    """The launcher's settings that have no verl key, checked."""
    if not re.fullmatch(r"[0-9]{1,9}", batch_size) or int(batch_size) < 1:
        raise SirenError(f"BATCH_SIZE must be a whole number >= 1, got {batch_size!r}")
    if offload not in ("auto", "none", "optimizer", "all"):
        raise SirenError(f"OFFLOAD must be auto, none, optimizer or all, got {offload!r}")
    card = None
    if gpu_memory_gib:
        try:
            card = float(gpu_memory_gib)
        except ValueError:
            card = math.nan
        if not (math.isfinite(card) and card > 0):
            raise SirenError(f"GPU_MEMORY_GIB must be a positive number, got {gpu_memory_gib!r}")
    return int(batch_size), offload, card


def detected_card_gib() -> float | None:
    from siren.tools.gpu_check import gpu_memory_total_mib

    totals = gpu_memory_total_mib()
    return min(totals) / 1024 if totals else None


def plan(batch_size: int, offload: str, card_gib: float | None, launcher: list[str], user: list[str],
         dry_run: bool) -> tuple[list[str], object]:
    """(the overrides the launcher adds, the composed config). Prints the memory estimate to stderr."""
    from siren.grpo_memory import OFFLOAD_LEVELS, choose_offload, model_shape

    launcher_keys = {override_key(o) for o in launcher} | set(PLANNED_KEYS)
    for override in user:
        key = override_key(override)
        if key in launcher_keys:
            setting = SETTING_OF_KEY.get(key, "OFFLOAD" if "offload" in key else "BATCH_SIZE" if "batch" in key else None)
            raise SirenError(f"{override!r} sets {key}, which the launcher sets"
                             + (f" from {setting}: set {setting} instead" if setting else "")
                             + " (one setting, one value)")
    config = compose(launcher + user)
    check_composed(config, dry_run)
    gpus, sequences = check_batches(config, batch_size)
    shape = model_shape(_get(config, "actor_rollout_ref.model.path"))
    if card_gib is None:
        card_gib = detected_card_gib()
        if card_gib is None:
            card_gib = 80.0
            print("no GPU visible here: estimating for 80 GiB cards (set GPU_MEMORY_GIB)", file=sys.stderr)
    estimate, why = choose_offload(
        shape, offload, gpus=gpus, gpus_per_node=_get(config, "trainer.n_gpus_per_node"), card_gib=card_gib,
        gpu_memory_utilization=_get(config, "actor_rollout_ref.rollout.gpu_memory_utilization"),
        micro_batch=_get(config, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"),
        max_prompt_length=_get(config, "data.max_prompt_length"),
        max_response_length=_get(config, "data.max_response_length"),
        lora_rank=_get(config, "actor_rollout_ref.model.lora_rank"))
    if not estimate.fits:
        raise SirenError(f"the run does not fit: {estimate.describe()}; use OFFLOAD=auto, more GPUs or LORA_RANK > 0")
    train_batch = batch_size * gpus  # prompts per step, over every GPU of every node
    print(f"memory estimate ({shape.parameters / 1e9:.2f}B parameters, {sequences} sequences per GPU per step, "
          f"data.train_batch_size {train_batch}): {estimate.describe()}; {why}", file=sys.stderr)
    levels = OFFLOAD_LEVELS[estimate.offload]
    planned = [f"data.train_batch_size={train_batch}",
               f"actor_rollout_ref.actor.ppo_mini_batch_size={train_batch}",  # one update per step
               f"actor_rollout_ref.actor.fsdp_config.param_offload={levels['param_offload']}",
               f"actor_rollout_ref.actor.fsdp_config.optimizer_offload={levels['optimizer_offload']}"]
    config = compose(launcher + planned + user)
    validate(config)
    return planned, config


def validate(config) -> None:
    """verl's own validate_config, as main_ppo runs it before Ray starts; its notes go to stderr."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Disabled critic")  # GRPO has no critic, on purpose
            validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    except Exception as err:  # verl raises AssertionError, ValueError and Hydra/OmegaConf errors alike
        raise SirenError(f"verl's validate_config rejects the config: {' '.join(str(err).split())}") from None


def latest_checkpoint(trainer_dir: Path) -> int:
    """The step of verl's latest checkpoint, after checking that every rank wrote its model shard there.

    With several nodes, each node's ranks write to their own TRAINER_DIR: the merge, on the node that
    runs the launcher, needs them all (a filesystem every node shares)."""
    latest = trainer_dir / LATEST_FILE
    if not latest.is_file():
        raise SirenError(f"training wrote no checkpoint ({latest} missing)")
    step = latest.read_text().strip()
    if not step.isdigit():
        raise SirenError(f"{latest} holds {step!r}, not a step number")
    actor = trainer_dir / f"global_step_{step}" / "actor"
    shards = sorted(actor.glob("model_world_size_*_rank_*.pt"))
    match = re.match(r"model_world_size_(\d+)_rank_\d+\.pt", shards[0].name) if shards else None
    if match is None:
        raise SirenError(f"{actor} holds no model shards (model_world_size_W_rank_R.pt)")
    world = int(match.group(1))
    missing = [rank for rank in range(world) if not (actor / f"model_world_size_{world}_rank_{rank}.pt").is_file()]
    if missing:
        raise SirenError(f"{actor} lacks the model shards of rank(s) {', '.join(map(str, missing))} of {world}: "
                         "with several nodes, TRAINER_DIR must be on a filesystem every node shares; nothing merged")
    return int(step)


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

    from siren.lora import merge_lora_float32

    merged = merge_lora_float32(model_dir, adapter_dir)
    # Remove the old weight files before writing new ones: they may still be memory-mapped.
    for old in [*model_dir.glob("*.safetensors"), *model_dir.glob("*.safetensors.index.json")]:
        old.unlink()
    merged.save_pretrained(model_dir)
    shutil.rmtree(adapter_dir)
    return {"r": adapter_config.get("r"), "lora_alpha": adapter_config["lora_alpha"],
            "target_modules": sorted(adapter_config.get("target_modules") or [])}


def finish(out: Path, settings: dict) -> None:
    from siren.io import write_manifest

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


def main(argv: list[str] | None = None) -> None:
    import argparse

    from siren import cli

    parser = cli.stage_parser(__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    plan_parser = verbs.add_parser("plan", help="check the composed config, choose batch and offload, print them")
    # strings, checked below with the launcher's names: BATCH_SIZE, OFFLOAD, GPU_MEMORY_GIB
    plan_parser.add_argument("--batch_size", required=True, help="prompts per GPU per step")
    plan_parser.add_argument("--offload", default="auto", help="auto, none, optimizer or all")
    plan_parser.add_argument("--gpu_memory_gib", default="", help="per card; empty: nvidia-smi's")
    plan_parser.add_argument("--dry_run", action="store_true", help="print the composed config instead")
    plan_parser.add_argument("--data_name", default=None, help="DATA_NAME: names GRPO_{data_name}_step{S}")
    plan_parser.add_argument("--data_dir_named_by", nargs="*", default=[],
                             help="NAME=value for each of CATEGORY, MAX_HISTORY, USE_LONG_HISTORY given")
    plan_parser.add_argument("--launcher", nargs="*", default=[], help="the launcher's Hydra overrides")
    plan_parser.add_argument("--user", nargs=argparse.REMAINDER, default=[], help="the user's Hydra overrides")
    latest_parser = verbs.add_parser("latest", help="print the step to merge, after checking the checkpoint")
    latest_parser.add_argument("--trainer_dir", required=True)
    latest_parser.add_argument("--output_dir", required=True)
    latest_parser.add_argument("--data_name", required=True)
    latest_parser.add_argument("--model_path", default=None, help="the trained base model (MODEL_PATH)")
    latest_parser.add_argument("--data_dir", default=None, help="the parquet folder (DATA_DIR)")
    cli.add_overwrite(latest_parser)
    finish_parser = verbs.add_parser("finish", help="merge a LoRA adapter and write the manifest")
    finish_parser.add_argument("merged_dir")
    finish_parser.add_argument("settings", nargs="*", help="key=value, recorded in the manifest")
    args = parser.parse_args(argv)

    if getattr(args, "data_name", None) is not None:  # it names the merged folder: a name, never a path
        from siren.data import check_category_name

        check_category_name(args.data_name, what="DATA_NAME")
    if args.verb == "plan":
        batch_size, offload, card = plan_settings(args.batch_size, args.offload, args.gpu_memory_gib)
        planned, config = plan(batch_size, offload, card, args.launcher, args.user, args.dry_run)
        check_data_dir_manifest(config, args.data_dir_named_by)
        if args.dry_run:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(config), end="")
        else:
            print(" ".join(planned))
    elif args.verb == "latest":
        from siren.outputs import StageOutputs

        step = latest_checkpoint(Path(args.trainer_dir))
        target = Path(args.output_dir) / f"GRPO_{args.data_name}_step{step}"
        checkpoint = f"the verl checkpoint is in {args.trainer_dir}/global_step_{step}"
        try:  # never the base model's folder or the data's, nor another stage's folder (OVERWRITE=1 or not)
            StageOutputs(target, None, script="main_grpo_amazon.sh", also_written_by=("grpo_trl.py",),
                         inputs=[args.model_path, args.data_dir], overwrite=True, flag="CKPT_DIR").check()
        except SirenError as err:
            raise SirenError(f"{err}; {checkpoint}") from None
        if target.exists() and not args.overwrite:
            raise SirenError(f"output already exists: {target} (set OVERWRITE=1 to replace it; {checkpoint})")
        print(step)
    else:
        if any("=" not in setting for setting in args.settings):
            raise SirenError("usage: python -m siren.grpo_verl finish MERGED_DIR key=value ...")
        finish(Path(args.merged_dir), dict(setting.split("=", 1) for setting in args.settings))


if __name__ == "__main__":
    sys.exit(run_main(main))
