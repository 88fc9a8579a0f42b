r"""Paired errors of two stage-6 runs on the same rows: is one model's lead more than noise?

    python scripts/paired_errors.py results/demo-real/ao_after results/demo-real/ao_before

Reads the predictions.jsonl of both folders (written by inference_ao_ddp.py), pairs the rows by
index, and prints, for the constrained rating and for the probability-weighted one, each run's
MAE and RMSE and the mean per-row difference (first run minus second) of the absolute and of the
squared error, with its standard error. A difference within about two standard errors of 0 is
not a lead. Both runs must have scored the same rows with the same labels, and every row must
carry a rating in both: a row without one is refused, not dropped. --out_json writes the figures
as JSON too.
"""

import argparse
import sys
from pathlib import Path

from siren import SirenError, cli
from siren.cli import run_main

READOUTS = {"constrained": "prediction", "probability-weighted": "expected_rating"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("first", type=Path, help="a stage-6 output folder (inference_ao_ddp.py --output_dir)")
    parser.add_argument("second", type=Path, help="the stage-6 output folder it is compared with, on the same rows")
    parser.add_argument("--out_json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def read_predictions(folder: Path) -> dict[int, dict]:
    """predictions.jsonl of a stage-6 folder, by row index; one-line errors for what cannot be paired."""
    from siren.reading import iter_jsonl

    path = folder / "predictions.jsonl"
    if not path.is_file():
        raise SirenError(f"no predictions.jsonl in {folder} (the output folder of inference_ao_ddp.py)")

    def check(row: dict, where: Path, number: int) -> dict:
        if not all(key in row for key in ("index", "label", *READOUTS.values())):
            raise SirenError(f"{where}:{number}: a prediction row needs index, label, {', '.join(READOUTS.values())}")
        return row

    rows: dict[int, dict] = {}
    for number, row in iter_jsonl(path, check):
        if row["index"] in rows:
            raise SirenError(f"{path}:{number}: row index {row['index']} appears twice")
        rows[row["index"]] = row
    if not rows:
        raise SirenError(f"{path} holds no rows")
    return rows


def paired_report(first: dict[int, dict], second: dict[int, dict], names: tuple[str, str]) -> dict:
    from siren.metrics import paired_difference, rating_metrics

    if first.keys() != second.keys():
        only = sorted(first.keys() ^ second.keys())
        raise SirenError(f"{names[0]} and {names[1]} scored other rows ({len(only)} indices in one only, "
                         f"first {only[0]}): pair runs on the same rows")
    indices = sorted(first)
    for index in indices:
        if first[index]["label"] != second[index]["label"]:
            raise SirenError(f"row {index} has label {first[index]['label']} in {names[0]} and "
                             f"{second[index]['label']} in {names[1]}: not the same rows")
    report = {"first": names[0], "second": names[1], "n": len(indices), "readouts": {}}
    for readout, key in READOUTS.items():
        errors, scores = [], []
        for run, name in ((first, names[0]), (second, names[1])):
            missing = [i for i in indices if not isinstance(run[i][key], (int, float))]
            if missing:
                raise SirenError(f"{len(missing)} rows of {name} have no {readout} rating ({key}), first row "
                                 f"{missing[0]}: paired errors need a rating on every row")
            errors.append([run[i][key] - run[i]["label"] for i in indices])
            scores.append(rating_metrics([run[i][key] for i in indices], [run[i]["label"] for i in indices]))
        report["readouts"][readout] = {
            "mae": [score["mae"] for score in scores],
            "rmse": [score["rmse"] for score in scores],
            "absolute_error_difference": paired_difference([abs(e) for e in errors[0]], [abs(e) for e in errors[1]]),
            "squared_error_difference": paired_difference([e * e for e in errors[0]], [e * e for e in errors[1]]),
        }
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['n']} rows; first = {report['first']}, second = {report['second']}",
             "readout                MAE first/second   RMSE first/second  abs err diff (SE)    sq err diff (SE)"]
    for readout, figures in report["readouts"].items():
        absolute, squared = figures["absolute_error_difference"], figures["squared_error_difference"]
        se = [f"{d['se']:.4f}" if d["se"] is not None else "—" for d in (absolute, squared)]
        lines.append(f"{readout:<22} {figures['mae'][0]:.4f} / {figures['mae'][1]:.4f}    "
                     f"{figures['rmse'][0]:.4f} / {figures['rmse'][1]:.4f}    "
                     f"{absolute['mean']:+.4f} ({se[0]})    {squared['mean']:+.4f} ({se[1]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out_json is not None and args.out_json.is_dir():
        raise SirenError(f"--out_json {args.out_json} is a folder; name a file")
    report = paired_report(read_predictions(args.first), read_predictions(args.second),
                           (str(args.first), str(args.second)))
    print(format_report(report))
    if args.out_json is not None:
        from siren.io import atomic_write_json

        atomic_write_json(args.out_json, report)
        print(f"wrote {args.out_json}")


if __name__ == "__main__":
    sys.exit(run_main(main))
