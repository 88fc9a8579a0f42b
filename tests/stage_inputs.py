"""Stage 5 and 6 inputs for tests, written the way stages 4a/4b/4c write them (data/README.md):
the 4c answer-only DatasetDict, 4b teacher_hidden.npy + teacher_index.npy and the 4a mask.pt, from
the `verl_dir` fixture and the tiny model, with the 4c and 4b manifest.json recording the model
(`siren.modeling.model_record`) as those stages do. conftest's `stage5_inputs` builds them once a run
(for test_alignment and test_train_hidden_mask); test_inference_ao and others build the 4c folder alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SYNTHETIC_REASONING = "<think>\nThe user rates films like this one highly, so a high rating fits.\n</think>"


def write_model_manifest(folder: Path, script: str, model_dir: Path) -> None:
    """The manifest.json a stage writes next to its outputs, recording its --model."""
    from siren.io import write_manifest
    from siren.modeling import MANIFEST_MODEL_KEY, model_record

    write_manifest(folder, script=script, args={"model": str(model_dir)},
                   extra={MANIFEST_MODEL_KEY: model_record(model_dir)})


def build_ao_dataset(verl_dir: Path, tokenizer, out: Path, limits=(16, 6, 6), model_dir: Path | None = None):
    """The stage 4c DatasetDict from the verl parquet (first rows of each split), built by the same
    function stage 4c uses; with `model_dir`, also 4c's manifest.json recording it."""
    from datasets import Dataset, DatasetDict

    from siren.answer_only_data import answer_only_records
    from siren.verl_data import load_split_rows

    splits = {split: Dataset.from_dict(answer_only_records(tokenizer, load_split_rows(verl_dir, split, limit=limit)))
              for split, limit in zip(("train", "valid", "test"), limits, strict=True)}
    DatasetDict(splits).save_to_disk(str(out))
    if model_dir is not None:
        write_model_manifest(out, "preprocess_hidden.py", model_dir)
    return out


@torch.no_grad()
def teacher_states_for(model, tokenizer, verl_dir: Path, n_rows: int) -> np.ndarray:
    """[n, L, H] hidden states at the last token of the teacher context (prompt + reasoning + <answer>)."""
    from siren.prompts import chat_prompt_text, teacher_context
    from siren.verl_data import load_split_rows

    states = []
    for row in load_split_rows(verl_dir, "train", limit=n_rows):
        text = teacher_context(chat_prompt_text(tokenizer, row["prompt"]), SYNTHETIC_REASONING)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1:]
        states.append(torch.stack([h[0, -1] for h in hidden]).float().numpy())
    return np.stack(states)


def build_stage5_inputs(verl_dir: Path, model_dir: Path, root: Path, n_train: int = 16, mask_every: int = 1,
                        n_valid: int = 6, n_test: int = 6) -> dict[str, Path]:
    """4c DatasetDict, 4b teacher_hidden.npy + teacher_index.npy, 4a mask.pt under `root`; the 4c and 4b
    folders hold a manifest.json recording `model_dir`."""
    from transformers import AutoModelForCausalLM

    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(model_dir, padding_side="right")
    instructions = build_ao_dataset(verl_dir, tokenizer, root / "hidden", (n_train, n_valid, n_test), model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    teacher_dir = root / "teacher"
    teacher_dir.mkdir(parents=True)
    np.save(teacher_dir / "teacher_hidden.npy", teacher_states_for(model, tokenizer, verl_dir, n_train))
    np.save(teacher_dir / "teacher_index.npy", np.arange(n_train, dtype=np.int64))
    write_model_manifest(teacher_dir, "extract_last_hidden_ddp.py", model_dir)
    mask = torch.tensor([i % mask_every == 0 for i in range(n_train)], dtype=torch.bool)
    torch.save(mask, root / "mask.pt")
    return {"instructions": instructions, "teacher": teacher_dir, "mask": root / "mask.pt"}
