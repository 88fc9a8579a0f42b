"""Stage 3 on one device: the settings, memory check, training and saving behind `grpo_trl.py`.

Settings are parsed as open-r1's grpo.py parses them, `TrlParser((GRPOScriptArguments, GRPOConfig,
ModelConfig))`, with siren.recipe's precedence: a value given in the `--config` recipe or on the
command line beats this stage's default (the verl launcher's values, `stage_defaults`), and a
setting given twice is refused. Every number is range-checked before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig, ModelConfig

from siren import SirenError
from siren.bounds import NON_NEGATIVE, POSITIVE, TRAINING_BOUNDS, Bound

DEFAULT_PROMPTS_PER_STEP = 32  # the verl launcher's BATCH_SIZE
GRPO_BOUNDS = {
    **TRAINING_BOUNDS, "beta": NON_NEGATIVE, "temperature": POSITIVE, "top_p": Bound(0, 1, low_open=True),
    "top_k": Bound(0, whole=True), "min_p": Bound(0, 1), "repetition_penalty": POSITIVE, "epsilon": POSITIVE,
    "num_generations": Bound(2, whole=True), "max_completion_length": Bound(1, whole=True),
    "num_iterations": Bound(1, whole=True), "steps_per_generation": Bound(1, whole=True),
    "generation_batch_size": Bound(1, whole=True), "max_prompt_length": Bound(1, whole=True),
    "limit": Bound(1, whole=True), "eval_limit": Bound(1, whole=True), "max_history": Bound(1, whole=True),
    "prompts_per_step": Bound(1, whole=True), "lora_r": Bound(1, whole=True), "lora_alpha": POSITIVE,
    "lora_dropout": Bound(0, 1, high_open=True),
}


def output_name(data_name: str, step: int) -> str:
    """`GRPO_{data_name}_step{S}`, the folder name both GRPO backends write."""
    return f"GRPO_{data_name}_step{step}"


@dataclass
class GRPOScriptArguments:
    """The SIREN settings of the TRL backend; training settings are GRPOConfig's, model settings ModelConfig's."""

    data_path: str | None = field(
        default=None, metadata={"help": "folder with train.parquet and val.parquet from preprocess_grpo.py; unset: "
                                        "data/{category}/verl/max@{max_history}-long@{use_long_history}",
                                "aliases": ["--data_dir"]})
    category: str = field(default="Movies", metadata={"help": "dataset category (names the default --data_path)",
                                                      "aliases": ["--data_category"]})
    max_history: int = field(default=10, metadata={"help": "names the default --data_path"})
    use_long_history: bool = field(default=True, metadata={"help": "names the default --data_path"})
    data_name: str | None = field(default=None, metadata={"help": "names the output GRPO_{data_name}_step{S}; "
                                                                   "unset: --category"})
    checkpoint_dir: str | None = field(
        default=None, metadata={"help": "TRL's intermediate checkpoints (--save_steps); unset: <output_dir>/trl/<run_name>"})
    max_prompt_length: int = field(
        default=2048, metadata={"help": "train/val rows whose chat prompt is longer are dropped and counted"})
    prompts_per_step: int | None = field(
        default=None, metadata={"help": "prompts per optimizer step on each device (the launcher's BATCH_SIZE); sets "
                                         "--gradient_accumulation_steps to prompts_per_step x num_generations / "
                                         f"per_device_train_batch_size; unset: {DEFAULT_PROMPTS_PER_STEP}"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N train rows (unset: all)",
                                                      "aliases": ["--train_limit"]})
    eval_limit: int | None = field(default=256, metadata={"help": "val rows used for evaluation",
                                                          "aliases": ["--val_limit"]})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing GRPO_{data_name}_step{S} folder"})
    # Not a flag: the settings the user gave and where (the recipe or the command line), for the manifest.
    user_given: dict = field(default_factory=dict, init=False)


@dataclass
class SirenGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig with `--output_dir` meaning this stage's output folder (alias `--out_dir`).

    A module-level class: the trainer pickles its config into every checkpoint (training_args.bin).
    """

    output_dir: str = field(
        default="ckpt",
        metadata={"help": "where the trained model folder GRPO_{data_name}_step{S} goes; TRL's own "
                          "checkpoints go to --checkpoint_dir", "aliases": ["--out_dir"]})


@dataclass
class SirenModelConfig(ModelConfig):
    """TRL's ModelConfig with the stage vocabulary's `--model` (alias `--model_path`)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "local base model folder (model + tokenizer with a chat template)",
                                "aliases": ["--model", "--model_path"]})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank, with --use_peft true (the launcher's LORA_RANK)",
                                              "aliases": ["--lora_rank"]})


DATACLASSES = (GRPOScriptArguments, SirenGRPOConfig, SirenModelConfig)


def stage_defaults() -> dict:
    """This stage's defaults for library fields: the verl launcher's settings, and the device's precision.

    Batch sizes count sequences (prompt + one response), as verl's micro batches do: 4 per forward
    pass, and --prompts_per_step 32 x 8 generations = 256 per optimizer step, i.e. 64 micro batches.
    """
    import torch

    use_cuda = torch.cuda.is_available()
    return {
        "learning_rate": 1e-6,
        "beta": 0.001,                          # verl's kl_loss_coef (TRL's default is 0: no KL term)
        "num_train_epochs": 2,
        "num_generations": 8,
        "per_device_train_batch_size": 4,       # the launcher's MICRO_BATCH_SIZE
        "eval_strategy": "steps",
        "eval_steps": 20,
        "save_steps": 20,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": not use_cuda,
        "bf16": use_cuda and torch.cuda.is_bf16_supported(),  # autocast only: the weights stay float32
        "dataloader_num_workers": 0,
        "lora_target_modules": ["all-linear"],  # as verl's LoRA (ModelConfig's default is peft's q/v only)
    }


def build_parser(doc: str | None = None):
    from trl import TrlParser

    from siren.cli import hf_parser

    return hf_parser(DATACLASSES, doc or __doc__, parser_class=TrlParser, **stage_defaults())


def parse_args(argv: list[str] | None = None, doc: str | None = None):
    """(GRPOScriptArguments, GRPOConfig, ModelConfig) from the command line and `--config recipe.yaml`;
    `doc` is the --help text (the script's docstring)."""
    from siren.bounds import check_numbers
    from siren.recipe import build_dataclasses, parse_settings

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(doc)
    namespace, given = parse_settings(parser, argv, same_setting={"prompts_per_step": "gradient_accumulation_steps"})
    check_numbers(parser, namespace, GRPO_BOUNDS, given)
    _derive(namespace, given)
    script_args, config, model_args = build_dataclasses(DATACLASSES, namespace)
    script_args.user_given = given
    return script_args, config, model_args


def _derive(namespace, given: dict) -> None:
    """The settings that follow from others, unless given."""
    from siren.data import check_category_name
    from siren.verl_data import default_verl_dir

    check_category_name(namespace.category)  # names folders (the default --data_path), as --data_name does
    if namespace.data_name is None:
        namespace.data_name = namespace.category
    check_category_name(namespace.data_name, what="--data_name")
    if namespace.data_path is None:
        namespace.data_path = str(default_verl_dir(namespace.category, namespace.max_history,
                                                   namespace.use_long_history))
    if namespace.run_name is None:
        namespace.run_name = f"GRPO_{namespace.data_name}"
    if namespace.checkpoint_dir is None:
        namespace.checkpoint_dir = str(Path(namespace.output_dir) / "trl" / namespace.run_name)
    micro, groups = namespace.per_device_train_batch_size, namespace.num_generations
    if "gradient_accumulation_steps" not in given:
        prompts = namespace.prompts_per_step or DEFAULT_PROMPTS_PER_STEP
        if (prompts * groups) % micro:
            raise SirenError(f"--prompts_per_step {prompts} x --num_generations {groups} = {prompts * groups} sequences "
                             f"per step must be a multiple of --per_device_train_batch_size {micro} (it counts "
                             "sequences, not prompts)")
        namespace.gradient_accumulation_steps = prompts * groups // micro
    if "per_device_eval_batch_size" not in given:  # whole groups of generations per evaluation batch
        namespace.per_device_eval_batch_size = math.lcm(micro, groups)


def validate(script_args: GRPOScriptArguments, config, model_args) -> None:
    """Inputs, the settings no library checks, and a free output folder; before anything loads."""
    from siren.bounds import check_report_to
    from siren.verl_data import parquet_path

    if not model_args.model_name_or_path:
        raise SirenError("give --model, a local model folder (e.g. --model ckpt/tiny-qwen3)")
    if not (Path(model_args.model_name_or_path) / "config.json").is_file():
        raise SirenError(f"--model {model_args.model_name_or_path} is not a model folder (no config.json)")
    for split in ("train", "val"):
        path = parquet_path(script_args.data_path, split)
        if not path.is_file():
            raise SirenError(f"missing parquet split: {path} (run preprocess_grpo.py first)")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise SirenError("--load_in_4bit/--load_in_8bit are not supported here: the adapter is merged into "
                         "full-precision weights before saving")
    lora_settings = sorted(name for name in script_args.user_given if name.startswith("lora_") or name == "use_dora")
    if lora_settings and not model_args.use_peft:
        raise SirenError(f"--{lora_settings[0]} is read with --use_peft true only (LoRA is off: full fine-tuning)")
    check_report_to(config.report_to)
    from siren.manifest import check_input_manifest

    # The flags that name the default --data_path must not contradict a --data_path given with them.
    named_by = {key: (getattr(script_args, key), f"--{key}") for key in ("max_history", "use_long_history", "category")
                if key in script_args.user_given}
    check_input_manifest(script_args.data_path, made_by="preprocess_grpo.py", flag="--data_path", expect=named_by)
    if config.max_steps > 0:
        trained_model_outputs(script_args, config, model_args, config.max_steps).check()


def trained_model_outputs(script_args: GRPOScriptArguments, config, model_args, step: int):
    """The StageOutputs of the model folder GRPO_{data_name}_step{step}: the folder is the output
    (replaced whole with --overwrite); the verl backend's folder of that name is this stage's too."""
    from siren.outputs import StageOutputs
    from siren.verl_data import parquet_path

    return StageOutputs(Path(config.output_dir) / output_name(script_args.data_name, step), None, script="grpo_trl.py",
                        also_written_by=("main_grpo_amazon.sh",), overwrite=script_args.overwrite,
                        inputs=[model_args.model_name_or_path, parquet_path(script_args.data_path, "train"),
                                parquet_path(script_args.data_path, "val")])


def fit_device(script_args: GRPOScriptArguments, config, model_args) -> None:
    """On a GPU: choose how many sequences one generate() call holds (unless given) so that the run's
    memory estimate fits the card, or refuse in one line with the estimate and what would fit."""
    import torch

    from siren.grpo_memory import GIB, model_shape, trl_estimate

    if config.use_cpu or not torch.cuda.is_available():
        print("no CUDA device: the run is not checked against a card's memory", file=sys.stderr)
        return
    card = torch.cuda.mem_get_info()[1] / GIB
    shape = model_shape(model_args.model_name_or_path)
    micro, groups = config.per_device_train_batch_size, config.num_generations

    def estimate(generation_batch: int, **changes):
        settings = dict(dtype=model_args.dtype or "float32", lora_rank=model_args.lora_r if model_args.use_peft else 0,
                        beta=config.beta, optim=str(config.optim))
        settings.update(changes)
        return trl_estimate(shape, card_gib=card, micro_batch=micro, generation_batch=generation_batch,
                            max_prompt_length=script_args.max_prompt_length,
                            max_completion_length=config.max_completion_length, **settings)

    given = script_args.user_given
    if "steps_per_generation" in given or "generation_batch_size" in given:
        chosen = estimate(config.generation_batch_size)
    else:
        # generate() takes steps_per_generation micro batches at once; on-policy when it divides the
        # gradient accumulation (TRL then needs no old log-probabilities), and whole groups of generations.
        steps = [s for s in range(config.gradient_accumulation_steps, 0, -1)
                 if config.gradient_accumulation_steps % s == 0 and (micro * s) % groups == 0]
        fitting = [s for s in steps if estimate(micro * s).fits]
        chosen_steps = fitting[0] if fitting else steps[-1]
        config.steps_per_generation, config.generation_batch_size = chosen_steps, micro * chosen_steps
        chosen = estimate(micro * chosen_steps)
    if not chosen.fits:
        alternatives = {"--beta 0 (no reference model)": estimate(chosen.generation_batch, beta=0.0),
                        "--use_peft true (LoRA r 16)": estimate(chosen.generation_batch, lora_rank=16),
                        "--use_peft true --dtype bfloat16": estimate(chosen.generation_batch, lora_rank=16,
                                                                     dtype="bfloat16")}
        fits = [f"{name}: {alt.total:.1f} GiB" for name, alt in alternatives.items() if alt.fits]
        raise SirenError(f"the run does not fit this GPU: {chosen.describe()}; "
                         + (f"fits with {'; '.join(fits)}" if fits else "use a bigger card or BACKEND=verl")
                         + " (or a smaller --per_device_train_batch_size / --max_completion_length)")
    print(f"memory estimate: {chosen.describe()}", file=sys.stderr)


def load_grpo_split(data_path, split: str, tokenizer, max_prompt_length: int, limit: int | None = None):
    """A `datasets.Dataset` of one parquet split for GRPOTrainer, without prompts over the length limit.

    Columns: `prompt` (the chat list), `ground_truth` and `data_source` (read by siren.reward.TRL_REWARDS),
    `index` (the parquet row). Returns (dataset, number of rows dropped for length).
    """
    from datasets import Dataset

    from siren.prompt_tokens import PromptTokenCounter
    from siren.verl_data import load_split_rows

    rows = load_split_rows(data_path, split, limit=limit)
    prompts = [row["prompt"] for row in rows]
    counter = PromptTokenCounter(tokenizer)
    counter.verify(prompts)
    lengths = counter.count(prompts)
    kept = [row for row, length in zip(rows, lengths, strict=True) if length <= max_prompt_length]
    records = [
        {
            "prompt": row["prompt"],
            "ground_truth": row["reward_model"]["ground_truth"],
            "data_source": row["data_source"],
            "index": int(row["extra_info"]["index"]),
        }
        for row in kept
    ]
    return Dataset.from_list(records), len(rows) - len(kept)


def load_policy(model_path: str | Path, dtype: str = "float32", attn_implementation: str | None = None,
                revision: str = "main"):
    """The policy, float32 by default on CPU and GPU alike (ModelConfig's --dtype).

    On a GPU, GRPOConfig(bf16=True) runs forward and backward under bf16 autocast while AdamW keeps
    updating float32 weights. Loaded in bfloat16, full fine-tuning at lr 1e-6 would barely move:
    Adam's first steps change a weight by about lr, far below half a bf16 ulp (about 6e-5 for a
    weight of 0.02), so most updates round away. TRL loads float32 by default for the same reason.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    if attn_implementation is None:  # rollouts decode without copying the KV cache (siren.decode_attention)
        from siren import decode_attention

        attn_implementation = decode_attention.register()
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype, attn_implementation=attn_implementation,
                                                revision=revision)


def train(script_args: GRPOScriptArguments, config, model_args):
    """Run GRPOTrainer; returns (trainer, counts of the rows used and dropped)."""
    from trl import GRPOTrainer, get_peft_config

    from siren.reward import TRL_REWARDS
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train_set, train_dropped = load_grpo_split(script_args.data_path, "train", tokenizer,
                                               script_args.max_prompt_length, script_args.limit)
    if len(train_set) == 0:
        raise SirenError(f"no train rows left: all are longer than --max_prompt_length {script_args.max_prompt_length}")
    eval_set, eval_dropped = None, 0
    if config.eval_strategy != "no":
        eval_set, eval_dropped = load_grpo_split(script_args.data_path, "val", tokenizer,
                                                 script_args.max_prompt_length, script_args.eval_limit)
    if train_dropped or eval_dropped:
        print(f"dropped {train_dropped} train and {eval_dropped} val rows longer than "
              f"{script_args.max_prompt_length} prompt tokens", file=sys.stderr)

    trainer = GRPOTrainer(
        model=load_policy(model_args.model_name_or_path, model_args.dtype or "float32",
                          model_args.attn_implementation, model_args.model_revision),
        reward_funcs=list(TRL_REWARDS),
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    prompts_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations
    lora = f"LoRA r {model_args.lora_r}" if model_args.use_peft else "full fine-tuning"
    print(f"GRPO (TRL) on {config.device.type}: {len(train_set)} train prompts, {config.num_generations} responses "
          f"each, {prompts_per_step} prompts per step in micro batches of {config.per_device_train_batch_size} "
          f"sequences, {config.generation_batch_size} sequences per generate(), {lora}")
    trainer.train()
    counts = {"train_rows": len(train_set), "train_rows_dropped_too_long": train_dropped,
              "val_rows": 0 if eval_set is None else len(eval_set), "val_rows_dropped_too_long": eval_dropped,
              "prompts_per_step": prompts_per_step}
    return trainer, counts


def save_trained(trainer, script_args: GRPOScriptArguments, config, model_args, counts: dict, timer) -> Path:
    """Write GRPO_{data_name}_step{S} (model with LoRA merged, tokenizer, train_log.jsonl, manifest.json)."""
    from siren.io import atomic_write_jsonl
    from siren.tokenization import save_tokenizer

    step = int(trainer.state.global_step)
    outputs = trained_model_outputs(script_args, config, model_args, step).check()
    trained = trainer.model
    if model_args.use_peft:
        trained = trained.merge_and_unload()  # a plain model that AutoModelForCausalLM reloads
    log_history = list(trainer.state.log_history)
    rewards = [entry["reward"] for entry in log_history if "reward" in entry]
    settings = {**config.to_dict(), **dataclasses.asdict(model_args), **dataclasses.asdict(script_args),
                "output_dir": config.output_dir}
    with outputs.claimed(), outputs.commit(settings, timer) as staged:
        trained.save_pretrained(staged.dir)
        save_tokenizer(trainer.processing_class, staged.dir)
        atomic_write_jsonl(staged.dir / "train_log.jsonl", log_history)
        staged.record(counts={**counts, "steps": step, "reward_first": rewards[0] if rewards else None,
                              "reward_last": rewards[-1] if rewards else None},
                      extra={"backend": "trl", "device": config.device.type})
    return outputs.folder


def run(script_args: GRPOScriptArguments, config, model_args) -> Path:
    """Validate, check the memory, train, save; returns the output folder."""
    from siren.io import RunTimer, check_output_folder
    from siren.outputs import claimed_folder

    validate(script_args, config, model_args)
    fit_device(script_args, config, model_args)
    timer = RunTimer()
    output_dir = config.output_dir
    check_output_folder(script_args.checkpoint_dir)
    # One run per checkpoint folder: a second run with the same --run_name would mix its checkpoints in.
    with claimed_folder(script_args.checkpoint_dir, config.distributed_state, "--checkpoint_dir"):
        config.output_dir = script_args.checkpoint_dir  # GRPOTrainer writes its checkpoints there
        trainer, counts = train(script_args, config, model_args)
        config.output_dir = output_dir
        target = save_trained(trainer, script_args, config, model_args, counts, timer)
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    summary = ", ".join(f"{r:.3f}" for r in rewards[:3]) + (" ... " + f"{rewards[-1]:.3f}" if len(rewards) > 3 else "")
    print(f"mean reward per logged step: {summary or 'none logged'}")
    print(f"wrote {target} (step {trainer.state.global_step}, {'LoRA merged' if model_args.use_peft else 'full model'}) "
          f"in {timer.seconds:.1f}s; logs in {target / 'train_log.jsonl'}")
    if any(not math.isfinite(r) for r in rewards):
        print("warning: non-finite rewards were logged", file=sys.stderr)
    return target


if __name__ == "__main__":
    # `python -m siren.grpo_trl` was this backend's command before grpo_trl.py. Run as a module, this file
    # would only define its functions and exit 0 with nothing trained and nothing checked.
    from siren.cli import run_main

    def _not_a_command() -> None:
        raise SirenError("`python -m siren.grpo_trl` is not a command (it was before grpo_trl.py): run "
                         "`python grpo_trl.py` with the same flags; nothing was read or written")

    sys.exit(run_main(_not_a_command))
