"""Stage 4a's records: one results.jsonl row per parquet row (`result_row`), the merged run's files
(results.jsonl, mask.pt, metrics.json: `CotResults`), and reading them back with one-line refusals
for stage 4b and stage 5 (`read_stage4a`, `load_thinking`, `load_mask`). Later stages read 4a's
files through this module only.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from siren import SirenError
from siren.answer import parse_response
from siren.reward import compute_score

if TYPE_CHECKING:
    import torch

SCRIPT_NAME = "inference_train_ddp.py"
# The stage-4a folder siren.tools.gpu_check writes without a GRPO model (fixed reasoning, right answers).
SYNTHETIC_WRITER = "siren.tools.gpu_check synthetic-cot"
STAGE_4A_WRITERS = (SCRIPT_NAME, SYNTHETIC_WRITER)
RESULTS_NAME, MASK_NAME, METRICS_NAME = "results.jsonl", "mask.pt", "metrics.json"
# Fields of results.jsonl, in order (data/README.md, stage 4a). Part rows carry extra private
# fields starting with "_" (timing) that the merge drops.
RESULT_FIELDS = (
    "index", "user_id", "parent_asin", "label", "response", "reasoning", "answer_text", "prediction",
    "valid", "correct", "format_ok", "generated_tokens",
)


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



def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """sha256 of a file's bytes (read a MiB at a time; ~0.1 s for a 50 MB parquet)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    except OSError as err:
        raise SirenError(f"{path}: cannot read ({err.strerror or err})") from None
    return digest.hexdigest()


# The authors scored an unparsable answer as 5.0; that scoring is reported beside the honest one
# (invalid rows left out) so the CoT row compares with answer-only rows, which score every row.
AUTHORS_INVALID_FILL = 5.0


@dataclass
class CotResults:
    """The merged rows of a run (dataset order) and what stage 4a writes from them."""

    rows: list[dict]           # results.jsonl rows (RESULT_FIELDS)
    seconds: list[float]       # generation wall time per row (its batch's time / batch size)
    warmup: list[bool]         # rows of a process's first batch (its warm-up), left out of the latency
    device: str
    measured: dict = field(default_factory=dict)  # engine, batch_size, dtype: how the latency was measured

    def latency(self) -> dict:
        """Latency of the rows after each process's warm-up batch (of every row when there are no others)."""
        from siren.metrics import latency_summary

        timed = [i for i, warm in enumerate(self.warmup) if not warm] or list(range(len(self.rows)))
        warm = [i for i, is_warm in enumerate(self.warmup) if is_warm]
        return latency_summary([self.seconds[i] for i in timed], [self.rows[i]["generated_tokens"] for i in timed],
                               self.device, **self.measured,
                               warmup_seconds=round(sum(self.seconds[i] for i in warm), 3),
                               warmup_rows=len(warm), includes_warmup=len(timed) == len(self.rows) and bool(warm))

    def metrics(self) -> dict:
        from siren.metrics import rating_metrics

        predictions, labels = [r["prediction"] for r in self.rows], [r["label"] for r in self.rows]
        return {
            "predictions": {
                "cot": rating_metrics(predictions, labels),
                "cot_invalid_as_5": rating_metrics(predictions, labels, invalid_fill=AUTHORS_INVALID_FILL),
            },
            "responses": response_summary(self.rows),
            "latency": self.latency(),
        }

    def write(self, folder: Path) -> dict:
        """Write results.jsonl, mask.pt and metrics.json into `folder`; returns the metrics."""
        from siren.io import atomic_write_json, atomic_write_jsonl

        metrics = self.metrics()
        atomic_write_jsonl(Path(folder) / RESULTS_NAME, self.rows)
        save_mask(Path(folder) / MASK_NAME, [r["correct"] for r in self.rows])
        atomic_write_json(Path(folder) / METRICS_NAME, metrics)
        return metrics


def metrics_line(metrics: dict) -> str:
    """One line for the console: how many responses were usable, the MAE, the CoT length."""
    cot, summary = metrics["predictions"]["cot"], metrics["responses"]
    mae = "n/a" if cot["mae"] is None else f"{cot['mae']:.4f}"
    return (f"{summary['valid']} valid, {cot['n_invalid']} invalid, {summary['format_ok']} well formed, "
            f"{summary['correct']} correct (mask); MAE on valid {mae}; "
            f"{metrics['latency']['generated_tokens_per_sample']:.1f} tokens/sample")


def thinking_file(path: str | os.PathLike) -> Path:
    """results.jsonl itself, or the stage 4a directory that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise SirenError(f"no thinking file at {path} (run inference_train_ddp.py first)")
    return path


def _json_kind(value) -> str:
    """How a JSON value reads to the user: `true`, a number, a string, a list, an object, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:30]!r}"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _is_whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What stage 4b reads from each results.jsonl row, with the JSON type it must have.
THINKING_FIELDS = {
    "index": (_is_whole_number, "a whole number"),
    "user_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "parent_asin": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "label": (_is_finite_number, "a number"),
    "reasoning": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "correct": (lambda v: isinstance(v, bool), "true or false"),
}


def load_thinking(path: Path) -> list[dict]:
    """Stage 4a's results.jsonl rows; a missing field or a value of the wrong JSON type (a
    `reasoning` that is a number or a list, a `label` of true, an `index` of "3") is a one-line
    error naming file:line."""
    from siren.io import iter_jsonl

    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [f for f in THINKING_FIELDS if f not in row]
        if missing:
            raise SirenError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        for name, (ok, expected) in THINKING_FIELDS.items():
            if not ok(row[name]):
                raise SirenError(f"{path}:{lineno}: `{name}` must be {expected}, got {_json_kind(row[name])}")
        rows.append(row)
    if not rows:
        raise SirenError(f"{path}: the thinking file is empty")
    return rows


def check_thinking_model(thinking_path: Path, actual: dict) -> str | None:
    """Refuse (one line) a results.jsonl that stage 4a wrote with another model than `actual`
    (`siren.modeling.model_record` of stage 4b's --model): architecture and weights digest are
    compared with the record in 4a's manifest.json next to it. Without a manifest, or with one
    that records no model (an older run), nothing is compared; the returned note says so."""
    from siren.io import MANIFEST_NAME, read_manifest
    from siren.modeling import check_same_model

    manifest = read_manifest(Path(thinking_path).parent)
    if manifest is None:
        return f"note: no {MANIFEST_NAME} next to {thinking_path}; not checking which model wrote it"
    recorded = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(recorded, dict):
        return (f"note: {Path(thinking_path).parent / MANIFEST_NAME} records no model (an older stage 4a run); "
                "not checking which model wrote it")
    check_same_model(recorded, actual, what=f"the reasoning in {thinking_path} was written by")
    return None


def read_stage4a(thinking_path: Path, rows: Sequence[dict], with_mask: bool) -> tuple[list[dict], list[bool] | None]:
    """Stage 4a's rows for these parquet `rows` (checked to be the same rows, in order) and, with
    `with_mask`, the mask.pt next to them (checked against their `correct`)."""
    thinking = load_thinking(thinking_path)
    check_thinking_matches(rows, thinking, thinking_path)
    if not with_mask:
        return thinking, None
    mask_path = Path(thinking_path).parent / MASK_NAME
    return thinking, check_mask_matches(load_mask(mask_path, len(thinking), "the thinking file"), thinking, mask_path)


def check_thinking_matches(rows: Sequence[dict], thinking: Sequence[dict], path: Path) -> None:
    """The thinking file must hold exactly the parquet rows, in order (index, user, item, label)."""
    if len(thinking) != len(rows):
        raise SirenError(
            f"{path} has {len(thinking)} rows but the parquet split has {len(rows)}; "
            "run stage 4b on the same split and --limit as stage 4a"
        )
    for position, (row, thought) in enumerate(zip(rows, thinking, strict=True)):
        info = row["extra_info"]
        expected = (int(info["index"]), str(info["user_id"]), str(info["parent_asin"]), float(row["label"]))
        found = (int(thought["index"]), str(thought["user_id"]), str(thought["parent_asin"]), float(thought["label"]))
        if expected != found:
            raise SirenError(
                f"{path}: row {position} is (index, user, item, label) {found} but the parquet row is {expected}"
            )


def save_mask(path: str | os.PathLike, correct: Sequence[bool]) -> Path:
    """Write mask.pt atomically. torch.save given a path stores that path's name inside the zip
    archive (here the random temporary name), so the tensor goes through an open file instead:
    identical runs give identical bytes."""
    import torch

    from siren.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(torch.tensor(list(correct), dtype=torch.bool), handle)
    return Path(path)


def _saved_file_kind(path: Path) -> str:
    """What a file that torch.load(weights_only=True) refused holds, from its first bytes."""
    import zipfile

    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\x93NUMPY"):
        return "a numpy array saved with np.save"
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return "a zip archive cut short"
        return "a torch.save archive of other Python objects (a pickled numpy array?)"
    if head[:1] == b"\x80":
        return "a plain Python pickle"
    if not head:
        return "nothing (an empty file)"
    return "bytes of another format (text?)"


def load_mask(path: str | os.PathLike, n_rows: int, rows_name: str = "the training split") -> torch.Tensor:
    """mask.pt: a 1-D torch.bool tensor of `n_rows` entries (True where the teacher's CoT rating was
    exactly right). Anything else (floats, ints, another length, not a tensor) is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SirenError(f"missing correctness mask: {path} (written by inference_train_ddp.py)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol remarks; the refusal below says it all
            mask = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises many kinds for a bad file
        # torch's own message advises weights_only=False, i.e. running the file's code: say what
        # the file is instead.
        raise SirenError(f"{path} holds {_saved_file_kind(path)}, not a tensor saved with torch.save; "
                         f"{MASK_NAME} is written by inference_train_ddp.py (rerun it)") from None
    if not isinstance(mask, torch.Tensor) or mask.ndim != 1 or mask.dtype != torch.bool:
        found = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SirenError(f"{path}: expected a 1-D torch.bool tensor, got {found}")
    if mask.numel() != n_rows:
        raise SirenError(f"{path} has {mask.numel()} entries but {rows_name} has {n_rows} rows")
    return mask


def check_mask_matches(mask, thinking: Sequence[dict], path: Path) -> list[bool]:
    """The mask must agree with results.jsonl's `correct` column row for row."""
    values = [bool(v) for v in mask.tolist()]
    disagree = [i for i, (m, t) in enumerate(zip(values, thinking, strict=True)) if m != bool(t["correct"])]
    if disagree:
        raise SirenError(f"{path} disagrees with the thinking file's `correct` at rows {disagree[:5]}")
    return values
