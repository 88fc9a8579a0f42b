"""Rating-prediction metrics: MAE, RMSE, exact-match accuracy, invalid count, per-label breakdown."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def _summary(errors: list[float], exact: list[bool]) -> dict:
    n = len(errors)
    if n == 0:
        return {"n": 0, "mae": None, "rmse": None, "acc": None}
    return {
        "n": n,
        "mae": sum(abs(e) for e in errors) / n,
        "rmse": math.sqrt(sum(e * e for e in errors) / n),
        "acc": sum(exact) / n,
    }


def rating_metrics(
    predictions: Sequence[float | None],
    labels: Sequence[float],
    invalid_fill: float | None = None,
) -> dict:
    """Score predictions against labels.

    A prediction of None is invalid. With `invalid_fill` None, invalid rows are left out of
    MAE/RMSE/acc (`scored_on` says so); with a value, they are scored as that value. Either way
    `n_invalid` is reported. `acc` is exact match; `acc_rounded` rounds predictions to the nearest
    whole star first (meaningful for continuous predictions such as the expected rating).
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    n_invalid = sum(p is None for p in predictions)
    scored = []
    for prediction, label in zip(predictions, labels):
        if prediction is None:
            if invalid_fill is None:
                continue
            prediction = invalid_fill
        scored.append((float(prediction), float(label)))

    errors = [p - y for p, y in scored]
    exact = [abs(p - y) < 1e-9 for p, y in scored]
    rounded = [math.floor(p + 0.5) == y for p, y in scored]
    result = {
        "n": len(labels),
        "n_valid": len(labels) - n_invalid,
        "n_invalid": n_invalid,
        "invalid_fill": invalid_fill,
        "scored_on": (
            "all rows" if n_invalid == 0
            else f"all rows, {n_invalid} invalid filled with {invalid_fill}" if invalid_fill is not None
            else f"{len(scored)} valid rows ({n_invalid} invalid rows left out)"
        ),
        **{k: v for k, v in _summary(errors, exact).items() if k != "n"},
        "acc_rounded": (sum(rounded) / len(rounded)) if rounded else None,
    }
    per_label: dict[str, dict] = {}
    for label in sorted(set(float(y) for y in labels)):
        idx = [i for i, (_, y) in enumerate(scored) if y == label]
        per_label[f"{label:.1f}"] = _summary([errors[i] for i in idx], [exact[i] for i in idx])
        per_label[f"{label:.1f}"]["n_invalid"] = sum(
            1 for p, y in zip(predictions, labels) if p is None and float(y) == label
        )
    result["per_label"] = per_label
    # How often each whole-star value was predicted (rounded), to spot a collapsed model at a glance.
    result["prediction_counts"] = dict(sorted(Counter(
        "invalid" if p is None else f"{min(5, max(1, math.floor(float(p) + 0.5)))}" for p in predictions
    ).items()))
    return result


def latency_summary(seconds_per_row: Sequence[float], generated_tokens: Sequence[int], device: str,
                    **measured) -> dict:
    """Latency block of metrics.json (stages 4a and 6 and the latency benchmark write the same keys).

    ms_per_sample is the wall time one process spent per sample (its batch time divided by the
    batch size), and samples_per_s its inverse, i.e. one process's throughput; with K processes
    the job runs about K times faster. ms_per_token divides the same time by the generated tokens.
    `measured` says how the rows were timed (engine, batch_size, dtype, warmup_seconds, ...): a
    table compares two rows only when those agree. The seconds given here exclude warm-up.
    """
    n = len(seconds_per_row)
    total = float(sum(seconds_per_row))
    tokens = sum(generated_tokens)
    return {
        "ms_per_sample": 1000.0 * total / n if n else None,
        "samples_per_s": n / total if total > 0 else None,
        "generated_tokens_per_sample": tokens / n if n else None,
        "ms_per_token": 1000.0 * total / tokens if tokens else None,
        "device": device,
        "n": n,
        **measured,
    }


def paired_difference(first: Sequence[float], second: Sequence[float]) -> dict:
    """The mean of `first[i] - second[i]` over rows scored by both, and its standard error.

    For two models' per-row errors on the same rows: a mean difference within about two standard
    errors of 0 is not a lead. The standard error is the sample standard deviation of the
    differences over sqrt(n) (None for fewer than 2 rows)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} values against {len(second)}")
    n = len(first)
    if n == 0:
        return {"n": 0, "mean": None, "se": None}
    differences = [a - b for a, b in zip(first, second)]
    mean = sum(differences) / n
    if n < 2:
        return {"n": n, "mean": mean, "se": None}
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    return {"n": n, "mean": mean, "se": math.sqrt(variance / n)}
