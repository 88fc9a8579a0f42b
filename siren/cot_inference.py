"""Stage 4a: the generation loop, its per-process part files and resume.

The rows are sorted by prompt length, longest first, and cut into batches once (`--batch_size`
rows) and process r of K generates batches r, r + K, ... (`siren.distributed.longest_first_batches`),
so a row is generated with the same batch-mates, and the same padding, whatever K is and wherever a
resumed run starts; similar lengths share a batch, so little of its prefill is padding.

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
4a's manifest back through siren.cot_results.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

from siren import SirenError
from siren.cot_results import CotResults, file_sha256, public_row, result_row

PARTIAL_DIR_NAME = "partial"
SETTINGS_NAME = "settings.json"


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
    written. Each process's first batch is its warm-up (kernel selection, the static cache's
    compilation): its rows are marked, and the latency is measured on the other rows. At the end the
    main process must see every rank's part file, else every process stops (nothing is merged).
    """
    from tqdm import tqdm

    from siren.distributed import longest_first_batches, require_files_on_main
    from siren.prompts import chat_prompt_text

    rank, world = state.process_index, state.num_processes
    prompts = [chat_prompt_text(tokenizer, row["prompt"]) for row in rows]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    todo = [(number, batch) for number, batch in longest_first_batches(lengths, batch_size, rank, world)
            if any(p not in finished for p in batch)]
    if state.is_main_process:
        print(f"{len(rows)} rows, {world} process(es); {sum(p < len(rows) for p in finished)} already done in "
              f"{part_dir}, {sum(len(b) for _, b in todo)} to generate on process 0")
    writer = PartWriter(part_path(part_dir, rank), settings)
    try:
        for done, (number, positions) in enumerate(tqdm(todo, desc="generate", disable=not state.is_main_process), 1):
            start = time.perf_counter()
            responses = generator.generate([prompts[p] for p in positions], seed=seed + number)
            seconds = (time.perf_counter() - start) / len(positions)
            writer.write({**result_row(rows[p], text, n_tokens), "_seconds": seconds, "_warmup": done == 1}
                         for p, (text, n_tokens) in zip(positions, responses, strict=True) if p not in finished)
    finally:
        writer.close()
    state.wait_for_everyone()
    require_files_on_main(state, [part_path(part_dir, rank) for rank in range(world)], part_dir)



def merged_results(part_dir: Path, n_rows: int, device: str, **measured) -> CotResults:
    """The part files merged into dataset order, with each row's time and warm-up mark."""
    merged = merge_parts(part_dir, n_rows)
    return CotResults([public_row(r) for r in merged], [float(r["_seconds"]) for r in merged],
                      [bool(r.get("_warmup", False)) for r in merged], device, measured)
