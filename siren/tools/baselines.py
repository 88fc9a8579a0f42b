"""Classical rating baselines (cornac) scored with the same metrics as the LLM stages.

Methods, in table order:
  constant_5      predict 5.0 everywhere (the value the authors' code silently used for unparsable
                  answers; on Movies test it scores MAE 0.7995, exactly two rows of the paper's tables)
  global_mean     the mean rating of the fit split(s)
  user_item_bias  mu + b_u + b_i (cornac BaselineOnly)
  mf_bias         mu + b_u + b_i + p_u . q_i (cornac MF with use_bias=True)
  pmf             probabilistic MF (cornac PMF, sigmoid link, no biases)

A test row whose user or item never occurs in the fit data is predicted as the global mean of the
fit data ("fallback"); how many rows did is reported per method. cornac's own fallback for an
unknown pair differs by model, and its BaselineOnly.score checks `knows_item` where it means
`knows_user`, so the trained models are only asked about pairs they know.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from siren import SirenError
from siren.metrics import rating_metrics

METHODS = ("constant_5", "global_mean", "user_item_bias", "mf_bias", "pmf")
METHOD_LABELS = {
    "constant_5": "Constant 5.0",
    "global_mean": "Global mean",
    "user_item_bias": "User + item bias",
    "mf_bias": "MF with biases",
    "pmf": "PMF",
}
FIT_CHOICES = {"train": ("train",), "train+valid": ("train", "valid")}
CONSTANT_RATING = 5.0


@dataclass(frozen=True)
class ModelSettings:
    """Hyper-parameters shared by the learned baselines (cornac's defaults except `k`)."""

    k: int = 10
    max_iter: int = 20
    pmf_max_iter: int = 100
    seed: int = 0


def cornac_model(method: str, settings: ModelSettings):
    """The cornac recommender for a learned method; None for the closed-form ones."""
    from cornac.models import MF, PMF, BaselineOnly

    if method == "user_item_bias":
        return BaselineOnly(max_iter=settings.max_iter, seed=settings.seed, verbose=False)
    if method == "mf_bias":
        return MF(k=settings.k, max_iter=settings.max_iter, use_bias=True, seed=settings.seed, verbose=False)
    if method == "pmf":
        return PMF(k=settings.k, max_iter=settings.pmf_max_iter, seed=settings.seed, verbose=False)
    if method in ("constant_5", "global_mean"):
        return None
    raise SirenError(f"unknown baseline {method!r}; choose from {', '.join(METHODS)}")


def model_params(method: str, settings: ModelSettings) -> dict:
    """The hyper-parameters a method actually used, for metrics.json."""
    model = cornac_model(method, settings)
    if model is None:
        return {"value": CONSTANT_RATING} if method == "constant_5" else {}
    names = ("k", "max_iter", "learning_rate", "lambda_reg", "use_bias", "variant", "seed")
    return {name: getattr(model, name) for name in names if hasattr(model, name)}


def run_baselines(
    fit_records: list[dict],
    eval_records: list[dict],
    methods: tuple[str, ...] = METHODS,
    settings: ModelSettings | None = None,
    progress: bool = False,
) -> dict:
    """Fit every method on `fit_records`, predict `eval_records`, return metrics per method.

    Records need `user_id`, `parent_asin` and `label` (the split-file schema).
    """
    import numpy as np
    from cornac.data import Dataset
    from tqdm.auto import tqdm

    settings = settings or ModelSettings()
    if not fit_records or not eval_records:
        raise SirenError("baselines need at least one fit row and one evaluation row")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SirenError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    triples = [(r["user_id"], r["parent_asin"], float(r["label"])) for r in fit_records]
    with warnings.catch_warnings():
        # cornac keeps the first rating of a repeated (user, item) pair and warns; counted below instead.
        warnings.simplefilter("ignore", UserWarning)
        fit_set = Dataset.from_uir(triples, seed=settings.seed)
    n_duplicates = len(triples) - len(fit_set.uir_tuple[2])
    global_mean = float(fit_set.global_mean)
    labels = [float(r["label"]) for r in eval_records]
    user_idx = [fit_set.uid_map.get(r["user_id"]) for r in eval_records]
    item_idx = [fit_set.iid_map.get(r["parent_asin"]) for r in eval_records]
    known = [u is not None and i is not None for u, i in zip(user_idx, item_idx, strict=True)]

    results: dict[str, dict] = {}
    for method in tqdm(methods, desc="baselines", disable=not progress):
        start = time.perf_counter()
        n_fallback = 0
        if method == "constant_5":
            predictions = [CONSTANT_RATING] * len(eval_records)
        elif method == "global_mean":
            predictions = [global_mean] * len(eval_records)
        else:
            model = cornac_model(method, settings)
            model.fit(fit_set)
            predictions = []
            for u, i, is_known in zip(user_idx, item_idx, known, strict=True):
                if is_known:
                    predictions.append(float(model.rate(u, i, clipping=True)))
                else:
                    predictions.append(global_mean)
                    n_fallback += 1
        if not np.all(np.isfinite(predictions)):
            raise SirenError(f"{method} produced non-finite predictions (diverged); try other settings")
        results[method] = {
            "label": METHOD_LABELS[method],
            "metrics": rating_metrics(predictions, labels),
            "n_fallback": n_fallback,
            "params": model_params(method, settings),
            "seconds": round(time.perf_counter() - start, 3),
        }

    return {
        "global_mean": global_mean,
        "n_fit_rows": len(fit_records),
        "n_fit_duplicates_dropped": n_duplicates,
        "n_fit_users": int(fit_set.num_users),
        "n_fit_items": int(fit_set.num_items),
        "n_eval_rows": len(eval_records),
        "unknown": {
            "rows_unknown_user": sum(u is None for u in user_idx),
            "rows_unknown_item": sum(i is None for i in item_idx),
            "rows_fallback": sum(not k for k in known),
        },
        "methods": results,
    }


def format_table(results: dict) -> str:
    """A plain-text table of the methods' MAE / RMSE / rounded accuracy / fallback rows."""
    lines = [f"{'method':<18} {'MAE':>7} {'RMSE':>7} {'acc(rnd)':>9} {'fallback':>9}"]
    for entry in results["methods"].values():
        metrics = entry["metrics"]
        lines.append(
            f"{entry['label']:<18} {metrics['mae']:>7.4f} {metrics['rmse']:>7.4f} "
            f"{metrics['acc_rounded']:>9.4f} {entry['n_fallback']:>9d}"
        )
    return "\n".join(lines)
