"""Stage 4a: batched chain-of-thought generation, result rows, and resumable per-process part files.

Each process generates its strided shard of the parquet rows (`siren.distributed`) and appends one
JSON line per finished row to its own part file, flushed and fsynced after every batch. A rerun
reads every part file, skips the rows already there and generates only the rest, so a crash costs
at most one batch per process. The main process then merges the parts into dataset order.

Two backends: Hugging Face `generate` (any device, used by the tests) and vLLM's offline
`LLM.generate` (GPU; imported only when asked for).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from siren import SirenError
from siren.answer import parse_response
from siren.reward import compute_score

PARTIAL_DIR_NAME = "partial"
SETTINGS_NAME = "settings.json"
# Test hook: stop every process after this many batches, as a crash would (no merged outputs).
STOP_AFTER_ENV = "SIREN_STOP_AFTER_BATCHES"
# Fields of results.jsonl, in order (data/README.md, stage 4a). Part rows carry extra private
# fields starting with "_" (timing) that the merge drops.
RESULT_FIELDS = (
    "index", "user_id", "parent_asin", "label", "response", "reasoning", "answer_text", "prediction",
    "valid", "correct", "format_ok", "generated_tokens",
)


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float  # 0 means greedy
    top_p: float = 1.0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise SirenError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise SirenError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SirenError(f"--top_p must be in (0, 1], got {self.top_p}")


def result_row(row: dict, response: str, generated_tokens: int) -> dict:
    """One results.jsonl row for a parquet row and the model's response.

    `correct` means the teacher can be trusted on this row: the response is well formed (one of
    each tag, in order, so the reasoning through `</think>` exists) and the rating in `<answer>`
    equals the label exactly, without clipping. It is what mask.pt holds.
    """
    parsed = parse_response(response)
    label = float(row["label"])
    correct = parsed.format_ok and parsed.rating is not None and parsed.rating == label
    info = row["extra_info"]
    return {
        "index": int(info["index"]),
        "user_id": str(info["user_id"]),
        "parent_asin": str(info["parent_asin"]),
        "label": label,
        "response": response,
        "reasoning": parsed.reasoning,
        "answer_text": parsed.answer_text,
        "prediction": parsed.rating,
        "valid": parsed.valid,
        "correct": bool(correct),
        "format_ok": parsed.format_ok,
        "generated_tokens": int(generated_tokens),
    }


def public_row(part_row: dict) -> dict:
    return {field: part_row[field] for field in RESULT_FIELDS}


def response_summary(rows: Sequence[dict]) -> dict:
    """Counts a reader needs next to the rating metrics: how many responses were usable at all."""
    n = len(rows)
    scores = [compute_score(None, r["response"], r["label"])["score"] for r in rows]
    return {
        "n": n,
        "format_ok": sum(r["format_ok"] for r in rows),
        "with_reasoning": sum(r["reasoning"] is not None for r in rows),
        "valid": sum(r["valid"] for r in rows),
        "correct": sum(r["correct"] for r in rows),
        "mean_reward": (sum(scores) / n) if n else None,
    }


def latency_summary(seconds_per_row: Sequence[float], generated_tokens: Sequence[int], device: str) -> dict:
    """Latency block of metrics.json (stage 6 writes the same keys).

    ms_per_sample is the wall time one process spent per sample (its batch time divided by the
    batch size), and samples_per_s its inverse, i.e. one process's throughput; with K processes
    the job runs about K times faster.
    """
    n = len(seconds_per_row)
    total = float(sum(seconds_per_row))
    return {
        "ms_per_sample": 1000.0 * total / n if n else None,
        "samples_per_s": n / total if total > 0 else None,
        "generated_tokens_per_sample": sum(generated_tokens) / n if n else None,
        "device": device,
        "n": n,
    }


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def batches(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


# ---------------------------------------------------------------------------------------------
# Part files and resume


def partial_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / PARTIAL_DIR_NAME


def part_path(part_dir: Path, rank: int) -> Path:
    return part_dir / f"rank{rank}.jsonl"


def check_resume_settings(part_dir: Path, settings: dict) -> bool:
    """True if `part_dir` holds parts made with `settings`; an error if made with others.

    Every process calls this and gets the same answer, so a mismatch stops all of them.
    """
    path = part_dir / SETTINGS_NAME
    if not path.exists():
        if any(part_dir.glob("rank*.jsonl")):
            raise SirenError(f"{part_dir} holds part files but no {SETTINGS_NAME}; delete it or pass --resume false")
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SirenError(f"{path} is not valid JSON; delete {part_dir} or pass --resume false") from None
    differing = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differing:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in differing)
        raise SirenError(
            f"partial results in {part_dir} were made with other settings ({detail}); "
            "rerun with the same flags, or pass --resume false to start over"
        )
    return True


def read_part_file(path: Path) -> list[dict]:
    """Rows of one part file; a torn last line (a crash mid-write) is ignored."""
    rows = []
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    for lineno, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SirenError(f"{path}:{lineno}: not valid JSON; delete {path.parent} or pass --resume false") from None
    return rows


def read_parts(part_dir: Path) -> dict[int, dict]:
    """Finished rows from every process's part file, keyed by `index`.

    A row can appear twice only if a rerun with a different process count redid it; both copies
    must then agree (the generation is deterministic), else the parts are not from one setting.
    """
    finished: dict[int, dict] = {}
    if not part_dir.is_dir():
        return finished
    for path in sorted(part_dir.glob("rank*.jsonl")):
        for row in read_part_file(path):
            index = int(row["index"])
            if index in finished and public_row(finished[index]) != public_row(row):
                raise SirenError(f"{part_dir}: row {index} appears twice with different responses")
            finished.setdefault(index, row)
    return finished


class PartWriter:
    """Appends finished rows to this process's part file; each batch reaches the disk before the next."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if path.exists():
            # Cut a torn last line so that the next append starts on a fresh line.
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(path, "r+b") as handle:
                    handle.truncate(keep)
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def merge_parts(part_dir: Path, n_rows: int) -> list[dict]:
    """All part rows in dataset order (index 0..n_rows-1), with their private fields."""
    finished = read_parts(part_dir)
    missing = [i for i in range(n_rows) if i not in finished]
    if missing:
        raise SirenError(f"{part_dir}: {len(missing)} of {n_rows} rows have no result (first: {missing[:5]})")
    # Rows past n_rows (an earlier attempt without --limit) are finished work that is not asked for.
    return [finished[i] for i in range(n_rows)]


def stop_after_batches() -> int | None:
    value = os.environ.get(STOP_AFTER_ENV, "").strip()
    return int(value) if value else None


# ---------------------------------------------------------------------------------------------
# Backends


def resolve_dtype(name: str, device_type: str):
    """torch dtype for --dtype; `auto` is bfloat16 on a CUDA device that supports it, else float32
    (bf16 matmuls on a CPU are slow and lossy)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise SirenError(f"unknown dtype {name!r}; expected auto, float32, bfloat16 or float16")
    return dtypes[name]


def load_causal_lm(model_path: str | os.PathLike, dtype, device):
    """A causal LM in eval mode on `device`, with a one-line error for a path that holds no model."""
    from siren.cli import gc_paused

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise SirenError(f"{path} holds no model (no config.json)")
    with gc_paused():
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        except (OSError, ValueError) as err:
            raise SirenError(f"cannot load a model from {path}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval()


class HFGenerator:
    """Left-padded batched `generate`; greedy at temperature 0."""

    def __init__(self, model, tokenizer, settings: SamplingSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)

    def generate(self, prompts: list[str]) -> list[tuple[str, int]]:
        import torch

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        sampling = (
            {"do_sample": True, "temperature": self.settings.temperature, "top_p": self.settings.top_p}
            if self.settings.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        with torch.no_grad():
            output = self.model.generate(
                **encoded,
                max_new_tokens=self.settings.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
        results = []
        for tokens in new_tokens:
            # The response ends at (and includes) the first end token; the rest is batch padding.
            length = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            results.append((text, length))
        return results


def check_backend(backend: str) -> None:
    """Fail before any work if the chosen backend cannot run here."""
    import importlib.util

    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise SirenError("--backend vllm needs the vllm package (pip install -r requirements.txt); use --backend hf")
    if backend not in ("hf", "vllm"):
        raise SirenError(f"unknown backend {backend!r}; expected hf or vllm")


class VLLMGenerator:
    """vLLM offline generation. Under several processes each one runs its own engine on its own
    GPU, joined to the launcher's process group as TRL's colocate mode does."""

    def __init__(self, model_path: str | os.PathLike, dtype: str, settings: SamplingSettings,
                 num_processes: int, seed: int) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise SirenError("--backend vllm needs the vllm package (pip install -r requirements.txt)") from None
        engine_args = {"distributed_executor_backend": "external_launcher"} if num_processes > 1 else {}
        self.llm = LLM(model=str(model_path), dtype="auto" if dtype == "auto" else dtype,
                       tensor_parallel_size=1, seed=seed, **engine_args)
        self.params = SamplingParams(
            temperature=settings.temperature, top_p=settings.top_p if settings.temperature > 0 else 1.0,
            max_tokens=settings.max_new_tokens, seed=seed,
        )

    def generate(self, prompts: list[str]) -> list[tuple[str, int]]:
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        return [(out.outputs[0].text, len(out.outputs[0].token_ids)) for out in outputs]


def settings_record(**values) -> dict:
    """JSON-able record of what determines the generated text (compared on resume)."""
    record = {}
    for key, value in values.items():
        if isinstance(value, SamplingSettings):
            record.update(asdict(value))
        elif isinstance(value, Path):
            record[key] = str(value.resolve())
        else:
            record[key] = value
    return record
