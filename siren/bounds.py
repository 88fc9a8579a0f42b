"""The ranges of the training stages' numbers, checked in one place before anything loads.

transformers checks almost none of `TrainingArguments`' numbers: a negative learning rate or weight
decay trains, `--max_steps 0` or 0 epochs saves the untrained model, a NaN learning rate fails
only after the model and data are loaded, and `--warmup_steps -5` is refused as "must be an
integer or a float". Stages 3 (`siren.grpo_trl`) and 5 (`siren.alignment_config`) parse their
flags into an argparse namespace, run `check_numbers` on it with `TRAINING_BOUNDS` plus their own
fields' ranges, and only then build their dataclasses. Errors are one line (SirenError) that say
what the value must be.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from siren import SirenError

UNBOUNDED = math.inf


@dataclass(frozen=True)
class Bound:
    """A number's range: low (inclusive unless low_open) to high (inclusive unless high_open), or
    one of `also` (values with a meaning of their own, such as -1 for "unset")."""

    low: float = -UNBOUNDED
    high: float = UNBOUNDED
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    also: tuple = ()
    also_means: str = ""

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a finite number"
        parts = []
        if self.low != -UNBOUNDED:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high != UNBOUNDED:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = f"{kind} {' and '.join(parts)}".rstrip()
        for value in self.also:
            text += f", or {value:g}" + (f" ({self.also_means})" if self.also_means else "")
        return text

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if value in self.also:
            return True
        if self.whole and value != int(value):
            return False
        if value < self.low or (self.low_open and value == self.low):
            return False
        return not (value > self.high or (self.high_open and value == self.high))


POSITIVE = Bound(0, low_open=True)
NON_NEGATIVE = Bound(0)
AT_LEAST_ONE = Bound(1, whole=True)
FRACTION = Bound(0, 1)

# TrainingArguments' numbers, shared by every stage whose settings are a TrainingArguments subclass.
# max_steps: transformers trains by epochs only when it is negative; 0 makes zero steps.
TRAINING_BOUNDS = {
    "learning_rate": POSITIVE, "weight_decay": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": Bound(0, 1, high_open=True), "adam_beta2": Bound(0, 1, high_open=True),
    "adam_epsilon": POSITIVE, "num_train_epochs": POSITIVE,
    "max_steps": Bound(1, whole=True, also=(-1,), also_means="train for --num_train_epochs"),
    "per_device_train_batch_size": AT_LEAST_ONE, "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE, "eval_accumulation_steps": AT_LEAST_ONE,
    "warmup_ratio": FRACTION, "warmup_steps": NON_NEGATIVE, "label_smoothing_factor": Bound(0, 1, high_open=True),
    "logging_steps": POSITIVE, "save_steps": POSITIVE, "eval_steps": POSITIVE, "eval_delay": NON_NEGATIVE,
    "save_total_limit": AT_LEAST_ONE, "seed": Bound(0, whole=True), "data_seed": Bound(0, whole=True),
    "dataloader_num_workers": Bound(0, whole=True), "dataloader_prefetch_factor": AT_LEAST_ONE,
    "torch_empty_cache_steps": AT_LEAST_ONE, "ddp_timeout": AT_LEAST_ONE,
}


def check_numbers(parser: argparse.ArgumentParser, namespace: argparse.Namespace, bounds: dict[str, Bound],
                  given: dict[str, str] | None = None) -> None:
    """Every float setting finite, and every setting of `bounds` in range (None = unset is allowed).

    `given` maps a setting to where the user gave it (`siren.recipe.parse_settings`), so that a
    value from a recipe is named with its file.
    """
    given = given or {}
    for action in parser._actions:
        value = getattr(namespace, action.dest, None)
        bound = bounds.get(action.dest)
        if value is None or isinstance(value, (list, str, bool)) or not action.option_strings:
            continue
        where = f" (in {given[action.dest].removeprefix('--config ')})" \
            if given.get(action.dest, "").startswith("--config ") else ""
        if bound is not None and not bound.accepts(value):
            raise SirenError(f"{action.option_strings[0]} must be {bound.describe()}, got {value}{where}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SirenError(f"{action.option_strings[0]} must be a finite number, got {value}{where}")


def check_report_to(report_to) -> None:
    """Refuse an unknown `--report_to` integration, which transformers refuses only once the
    trainer is built (after the model and data are loaded)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    unknown = [name for name in names if name not in INTEGRATION_TO_CALLBACK and name not in ("none", "all")]
    if unknown:
        raise SirenError(f"--report_to: unknown integration {', '.join(map(repr, unknown))}; choose from none, "
                         f"all, {', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
