r"""Stage 5: train LoRA adapters so the answer-only context reproduces the teacher's hidden states.

For every training row whose CoT prediction was right (stage 4a mask), the student reads the
answer-only prompt (stage 4c) and its hidden state of every layer at the end of `<answer>` is pulled
towards the teacher's state at the same token after prompt + CoT (stage 4b). Writes
`<output_dir>/adapter/`, `<output_dir>/merged/` (what inference_ao_ddp.py --model loads),
`train_log.jsonl` and `manifest.json`, all or none; the trainer's checkpoints go to
`<output_dir>/checkpoints/`.

    accelerate launch --config_file config_Zero2.yaml --num_processes 8 train_hidden_mask.py \
        --model ckpt/GRPO_Movies_step100 \
        --data_path data/Movies/hidden/max@10-long@True \
        --teacher_hidden_path results_hidden/Movies \
        --teacher_mask_path results_train/Movies/mask.pt \
        --output_dir ckpt/AO_Movies_HA

(--instruction_path, the authors' name of --data_path, is accepted.) Every field of transformers'
TrainingArguments is a flag (--learning_rate, --num_train_epochs, --max_steps,
--gradient_accumulation_steps, ...), with this stage's defaults; `--config recipe.yaml` sets any of
them (a setting given there and as a flag, or twice, is refused). Every number is range-checked
before anything loads (--max_steps -1 means: train for --num_train_epochs). The 4c and 4b
manifests are read: prompts built with another tokenizer, or teacher states extracted with another
model than --model, are refused. Before training the main process prints the optimizer steps and
how many warm up (--warmup_steps below 1 is a fraction of them; default 0.133). merged/ is the base
read in float32 plus adapter/, stored in the base's dtype. On a CPU (tests, demo) run the same flags
under `python train_hidden_mask.py ...` or `accelerate launch --cpu train_hidden_mask.py ...`; on
several machines add --num_machines, --machine_rank, --main_process_ip and --main_process_port to
the accelerate launch line (docs/pipeline.md, "Several machines").
"""

from __future__ import annotations

import sys

from siren.cli import run_main


def parse_args(argv: list[str] | None = None):
    """(AlignmentArguments, AlignmentTrainingConfig); bad values are one-line errors."""
    from siren.alignment_config import parse_alignment_args

    return parse_alignment_args(sys.argv[1:] if argv is None else list(argv), __doc__)


def main(argv: list[str] | None = None) -> None:
    from siren.io import RunTimer

    timer = RunTimer()
    stage, config = parse_args(argv)

    from siren.alignment import load_alignment_inputs, save_adapter, save_merged, train_alignment, validate
    from siren.io import atomic_write_jsonl
    from siren.modeling import MANIFEST_MODEL_KEY, adapter_base_record

    outputs, base, checkpoints = validate(stage, config)  # every process, before anything loads
    # The processes were set up when the settings were parsed (TrainingArguments' device set-up).
    with outputs.claimed(config.distributed_state):
        inputs = load_alignment_inputs(stage, base)
        notes = [*inputs.notes, checkpoints.prepare(config.save_strategy)]
        if config.process_index == 0:
            print("\n".join(note for note in notes if note) or "checked the 4c and 4b manifests against --model")

        run = train_alignment(stage, config, inputs, checkpoints)
        if run.is_main_process:
            counts = {**inputs.counts, "optimizer_steps": run.optimizer_steps,
                      "warmup_steps": run.schedule.warmup_steps, "processes": run.accelerator.num_processes}
            with outputs.commit({"alignment": vars(stage), "training": config.to_dict()}, timer) as staged:
                save_adapter(run.model, staged.path("adapter"), adapter_base_record(stage.model, inputs.model_config))
                save_merged(staged.path("adapter"), staged.path("merged"), stage.model)
                atomic_write_jsonl(staged.path("train_log.jsonl"), run.log_history)
                staged.record(counts=counts, extra={MANIFEST_MODEL_KEY: base, "lora_target_modules": run.lora_target_modules,
                                                    "bf16": config.bf16, "best_checkpoint": run.best_checkpoint,
                                                    "best_eval": run.best_eval})
            metric = config.metric_for_best_model
            print(
                f"read {counts['train_rows']} train rows ({counts['masked_in_rows']} masked in, {counts['selected_rows']} "
                f"selected by --training_ratio {stage.training_ratio}, {counts['dropped_too_long_train']} dropped as too "
                f"long) and {counts['eval_rows']} valid rows; trained LoRA on {', '.join(run.lora_target_modules)} for "
                f"{run.optimizer_steps} steps; best eval {metric} {run.best_eval.get(f'eval_{metric}')}; wrote "
                f"{outputs.folder}/adapter, merged, train_log.jsonl, manifest.json in {timer.seconds:.1f}s"
            )
        run.accelerator.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(run_main(main))
