"""Stage 4a: the generation loop, its files (results.jsonl, mask.pt, metrics.json) and resume.

The rows are cut into batches once (`--batch_size` rows in dataset order) and process r of K
generates batches r, r + K, ... (`siren.distributed.my_batches`), so a row is generated with the
same batch-mates, and the same padding, whatever K is and wherever a resumed run starts.

Each process appends one JSON line per finished row to its own part file, flushed and fsynced after
every batch. A rerun reads every part file, skips the rows already there and generates only the
rest, so a crash costs at most one batch per process. The parts carry the settings they were made
with (`settings.json`): the model's fingerprint (`siren.modeling.model_fingerprint`: weights,
config.json, generation_config.json, tokenizer and chat template), the sha256 of the input parquet,
the sampling settings; a rerun whose settings differ is refused, so parts of another model or of a
parquet rebuilt at the same path are never mixed in. settings.json is written with the first
finished rows, and a folder without finished rows is nothing to resume: a run that fails before
its first batch (a broken model) leaves nothing that blocks its corrected rerun. The main process
then merges the parts into dataset order. Stage 4b and stage 5 read results.jsonl, mask.pt and
4a's manifest back through this module only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from siren import SirenError
from siren.answer import parse_response
from siren.reward import compute_score

if TYPE_CHECKING:
    import torch

SCRIPT_NAME = "inference_train_ddp.py"
# The stage-4a folder siren.gpu_check writes without a GRPO model (fixed reasoning, right answers).
SYNTHETIC_WRITER = "siren.gpu_check synthetic-cot"
STAGE_4A_WRITERS = (SCRIPT_NAME, SYNTHETIC_WRITER)
RESULTS_NAME, MASK_NAME, METRICS_NAME = "results.jsonl", "mask.pt", "metrics.json"
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


def partial_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / PARTIAL_DIR_NAME


def part_path(part_dir: Path, rank: int) -> Path:
    return part_dir / f"rank{rank}.jsonl"


def holds_finished_rows(part_dir: Path) -> bool:
    """Whether any part file in `part_dir` holds a complete row (a line ended by a newline)."""
    for path in part_dir.glob("rank*.jsonl"):
        with open(path, "rb") as handle:
            if b"\n" in handle.read():
                return True
    return False


def check_resume_settings(part_dir: Path, settings: dict) -> bool:
    """True if `part_dir` holds finished rows made with `settings`; an error if made with others.

    False when it holds no finished row: what a run that stopped before writing its first batch
    left (a settings.json of an older version, an empty part file) is nothing to resume, and does
    not block this run. Every process calls this and gets the same answer, so a mismatch stops all
    of them.
    """
    path = part_dir / SETTINGS_NAME
    if not part_dir.is_dir() or not holds_finished_rows(part_dir):
        return False
    if not path.exists():
        raise SirenError(f"{part_dir} holds part files but no {SETTINGS_NAME}; delete it or pass --resume false")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SirenError(f"{path} is not valid JSON; delete {part_dir} or pass --resume false") from None
    if not isinstance(saved, dict):
        raise SirenError(f"{path} is not a settings record; delete {part_dir} or pass --resume false")
    differing = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differing:
        detail = ", ".join(f"{k}: {_short(saved.get(k))} -> {_short(settings.get(k))}" for k in differing)
        raise SirenError(
            f"partial results in {part_dir} were made with other settings ({detail}); "
            "rerun with the same flags and inputs, or pass --resume false to start over"
        )
    return True


def _short(value) -> str:
    """A settings value for the one-line message: digests cut to 12 characters."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(value[:12] + "...")
    return repr(value)


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
    """Appends finished rows to this process's part file; each batch reaches the disk before the next.

    Nothing is written before the first rows: then the folder, `settings` as settings.json (the
    resume settings, unless there already) and the part file. A run that fails before finishing a
    batch therefore leaves nothing for its rerun to check. A write the disk refuses (full, quota,
    read-only) is a one-line error; the rows of earlier batches stay, and a rerun resumes from them.
    """

    def __init__(self, path: Path, settings: dict | None = None) -> None:
        self.path = path
        self.settings = settings
        self.handle = None

    def _open(self) -> None:
        from siren.io import atomic_write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        settings_path = self.path.parent / SETTINGS_NAME
        if self.settings is not None and not settings_path.exists():
            # Every process may write it; the content is the same, and each write is a rename.
            atomic_write_json(settings_path, self.settings)
        if self.path.exists():
            # Cut a torn last line so that the next append starts on a fresh line.
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(self.path, "r+b") as handle:
                    handle.truncate(keep)
        self.handle = open(self.path, "a", encoding="utf-8")

    def write(self, rows: Iterable[dict]) -> None:
        from siren.reading import one_line

        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
        if not lines:
            return
        try:
            if self.handle is None:
                self._open()
            self.handle.writelines(lines)
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as err:
            raise SirenError(f"cannot append to {self.path} ({one_line(err)}); the rows of earlier batches are kept "
                             "there, and rerunning the same command resumes from them") from None

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.handle.close()
            except OSError:
                pass  # a failed flush was reported by write(); the torn line is cut on the next open


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


def settings_record(**values) -> dict:
    """JSON-able record of what determines the generated text (compared on resume)."""
    record = {}
    for key, value in values.items():
        if is_dataclass(value):
            record.update(asdict(value))
        elif isinstance(value, Path):
            record[key] = str(value.resolve())
        else:
            record[key] = value
    return record


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


def resume_settings(*, model: dict, data_file: Path, **values) -> dict:
    """What a resume must find unchanged: `values` (backend, dtype, seed, the SamplingSettings)
    plus the identity of the inputs, not only their paths: the model's fingerprint (`model` is
    `siren.modeling.model_record`; `model_fingerprint` holds the weights, config.json,
    generation_config.json, tokenizer and chat template digests) and the sha256 of the parquet
    file, so a model retrained or edited (rope_theta, an eos id) or a parquet rebuilt at the same
    path (other --max_history, another row order) does not pass for the one the parts came from."""
    from siren.modeling import model_fingerprint

    return settings_record(
        model=model["path"], **model_fingerprint(model),
        data=Path(data_file), data_sha256=file_sha256(data_file), **values,
    )


def prepare_parts(part_dir: Path, settings: dict, state, resume: bool) -> dict[int, dict]:
    """Check `part_dir` on every process; returns the rows finished by an earlier run.

    Every process checks the saved settings and gets the same answer, so a mismatch stops all of
    them before any writes. With `resume=False`, or nothing to resume, the main process clears the
    folder; the settings are written with the first finished rows (`PartWriter`). With several
    machines the folder must be one they all share (`siren.distributed.check_shared_folder`), else
    every process stops here, before generating anything.
    """
    from siren.distributed import check_shared_folder

    resuming = resume and check_resume_settings(part_dir, settings)
    # Every process has decided whether to resume before the main process clears the folder.
    state.wait_for_everyone()
    if state.is_main_process and not resuming and part_dir.exists():
        shutil.rmtree(part_dir)
    state.wait_for_everyone()
    check_shared_folder(part_dir, state)
    state.wait_for_everyone()
    finished = read_parts(part_dir) if resuming else {}
    # Nobody appends to a part file before everyone has read them all.
    state.wait_for_everyone()
    return finished


def generate_results(rows: Sequence[dict], tokenizer, generator, *, state, part_dir: Path, finished: dict[int, dict],
                     batch_size: int, seed: int, settings: dict) -> None:
    """Generate this process's unfinished batches, appending each batch's rows to its part file
    (`settings`, the resume settings, go to settings.json with the first rows).

    A batch some of whose rows are finished (a torn write, a rerun with another process count) is
    generated whole, so its padding is that of an uninterrupted run; only its missing rows are
    written. `SIREN_STOP_AFTER_BATCHES=n` stops the process after n batches, as a crash would.
    Each process's first batch is its warm-up (kernel selection, the static cache's compilation):
    its rows are marked, and the latency is measured on the other rows. At the end the main process
    must see every rank's part file, else every process stops (nothing is merged).
    """
    from tqdm import tqdm

    from siren.distributed import batches, my_batches, require_files_on_main
    from siren.prompts import chat_prompt_text

    rank, world = state.process_index, state.num_processes
    todo = [(number, batch) for number, batch in my_batches(list(batches(range(len(rows)), batch_size)), rank, world)
            if any(p not in finished for p in batch)]
    if state.is_main_process:
        print(f"{len(rows)} rows, {world} process(es); {sum(p < len(rows) for p in finished)} already done in "
              f"{part_dir}, {sum(len(b) for _, b in todo)} to generate on process 0")
    writer = PartWriter(part_path(part_dir, rank), settings)
    stop_after = stop_after_batches()
    try:
        for done, (number, positions) in enumerate(tqdm(todo, desc="generate", disable=not state.is_main_process), 1):
            prompts = [chat_prompt_text(tokenizer, rows[p]["prompt"]) for p in positions]
            start = time.perf_counter()
            responses = generator.generate(prompts, seed=seed + number)
            seconds = (time.perf_counter() - start) / len(positions)
            writer.write({**result_row(rows[p], text, n_tokens), "_seconds": seconds, "_warmup": done == 1}
                         for p, (text, n_tokens) in zip(positions, responses, strict=True) if p not in finished)
            if stop_after is not None and done >= stop_after:
                raise SystemExit(f"stopped after {done} batch(es) ({STOP_AFTER_ENV} is set)")
    finally:
        writer.close()
    state.wait_for_everyone()
    require_files_on_main(state, [part_path(part_dir, rank) for rank in range(world)], part_dir)


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

    @classmethod
    def from_parts(cls, part_dir: Path, n_rows: int, device: str, **measured) -> CotResults:
        merged = merge_parts(part_dir, n_rows)
        return cls([public_row(r) for r in merged], [float(r["_seconds"]) for r in merged],
                   [bool(r.get("_warmup", False)) for r in merged], device, measured)

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
