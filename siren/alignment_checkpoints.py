"""Stage 5's checkpoint folder (<output_dir>/checkpoints): whose checkpoints it holds, and what a
failed run leaves in it.

Training always starts from step 0, so old checkpoints are never resumed; but until they are
cleared, `load_best_model_at_end` and the `save_total_limit` rotation see them next to the new
ones. So every checkpoint folder records the settings of the run that made it (run_settings.json),
written just before that run's first checkpoint: a run that fails before it saved anything leaves
no record, and no folder it made. A later run clears the checkpoints of a run with its own
settings (it makes them again) and refuses, in one line naming what differs, those of a run with
other or unrecorded settings (a killed run, an older version) unless --overwrite. A record without
checkpoints next to it guards nothing and is cleared.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from siren import SirenError

CHECKPOINT_SETTINGS_NAME = "run_settings.json"
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR, then the step

# Settings that do not change what the checkpoints hold, or differ between the processes of one
# run (local_rank) or between spellings of one folder (output_dir: the folder being checked).
_NOT_CHECKPOINT_SETTINGS = frozenset({
    "overwrite", "output_dir", "local_rank", "report_to", "run_name", "project", "logging_steps",
    "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "log_level", "log_level_replica",
    "disable_tqdm", "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "save_total_limit", "hub_token",
})


def run_settings(stage, config) -> dict:
    """The settings that decide a run's checkpoints, as JSON values (recorded next to them)."""
    settings = {"alignment": asdict(stage), "training": config.to_dict()}
    settings = json.loads(json.dumps(settings, default=str))
    return {part: {k: v for k, v in values.items() if k not in _NOT_CHECKPOINT_SETTINGS}
            for part, values in settings.items()}


def saved_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint-<step> folders in `folder`, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX))
                  if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit() else -1)


def check_checkpoint_dir(folder: str | os.PathLike, settings: dict, overwrite: bool) -> bool:
    """May this run use `folder` for its checkpoints? True if it holds old ones to clear first;
    a one-line refusal for checkpoints of a run with other or unrecorded settings (see module doc)."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise SirenError(f"{folder} is a file; stage 5 keeps its checkpoints in that folder")
    entries = [p.name for p in folder.iterdir()]
    if not entries:
        return False
    if overwrite or entries == [CHECKPOINT_SETTINGS_NAME]:
        return True
    record = folder / CHECKPOINT_SETTINGS_NAME
    if not record.is_file():
        raise SirenError(f"{folder} holds checkpoints of an earlier run whose settings are not recorded; "
                         "pass --overwrite to clear them, or choose another --output_dir")
    from siren.io import read_json

    saved = read_json(record)
    saved = saved if isinstance(saved, dict) else {}
    differing = []
    for part in ("alignment", "training"):
        old, new = saved.get(part, {}), settings.get(part, {})
        differing += [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differing:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differing[:3])
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise SirenError(f"{folder} holds checkpoints of a run with other settings ({detail}{more}); "
                         "pass --overwrite to clear them, or choose another --output_dir")
    return True


@dataclass
class CheckpointFolder:
    """This run's checkpoint folder: checked before anything loads, cleared before training,
    recorded before the first checkpoint, tidied when the run fails."""

    path: Path
    settings: dict
    overwrite: bool
    # Folders of this path that did not exist when the run started (deepest first): a failed run
    # removes those that are still empty.
    made: list[Path] = field(default_factory=list)

    @classmethod
    def check(cls, stage, config) -> CheckpointFolder:
        """On every process, before anything loads: refuse a folder this run may not use."""
        path = Path(config.output_dir)
        made = [p for p in (path, *path.parents) if not os.path.lexists(p)]
        folder = cls(path, run_settings(stage, config), stage.overwrite, made)
        check_checkpoint_dir(path, folder.settings, folder.overwrite)
        return folder

    def prepare(self, save_strategy) -> str | None:
        """Collective, before training: check the folder again, then the main process clears old
        checkpoints. Returns a note to print when it did.

        A run that saves checkpoints on several machines needs the folder shared by all of them
        (DeepSpeed writes each rank's optimizer shard into it, and every rank loads the best
        checkpoint back at the end): `siren.distributed.check_shared_folder` refuses it otherwise.
        """
        from accelerate import PartialState

        from siren.distributed import check_shared_folder

        clear = check_checkpoint_dir(self.path, self.settings, self.overwrite)  # every process decides alike
        state = PartialState()
        state.wait_for_everyone()
        if str(getattr(save_strategy, "value", save_strategy)) != "no":
            check_shared_folder(self.path, state)
        if state.is_main_process and clear:
            shutil.rmtree(self.path)
            self.made.insert(0, self.path)  # what is made there from now on is this run's
        state.wait_for_everyone()
        return f"note: cleared the checkpoints of an earlier run in {self.path}" if clear else None

    def record_settings(self) -> None:
        """Main process, just before a checkpoint is saved: this run's settings next to it."""
        from siren.io import atomic_write_json

        record = self.path / CHECKPOINT_SETTINGS_NAME
        if not record.is_file():
            atomic_write_json(record, self.settings)

    def tidy_after_failure(self) -> str:
        """Main process, when the run fails: a settings record without checkpoints, and the empty
        folders this run made, are removed. Returns what stays, for the error message."""
        left = saved_checkpoints(self.path)
        if not left:
            (self.path / CHECKPOINT_SETTINGS_NAME).unlink(missing_ok=True)
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not there): neither are the folders above it
        if not left:
            return ""
        return (f"; the checkpoints saved before it ({', '.join(p.name for p in left)}) stay in {self.path} "
                "(a rerun with the same settings clears them)")
