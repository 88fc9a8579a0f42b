"""scripts/warm_start_format.py: the completion builder, an end-to-end run, the error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_refused, load_script, run_in_process

from siren import SirenError

SCRIPT = "scripts/warm_start_format.py"


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": "You predict ratings."}, {"role": "user", "content": user}]


def _user(history: list[str], candidate: str) -> str:
    from siren.prompts import user_prompt

    return user_prompt("Movies", "\n".join(history), candidate, sketch="Topics of movies this user tends to rate "
                       "highly:\n- Drama", max_history=10)


def test_completion_is_read_off_the_prompt_not_the_label():
    ws = load_script(SCRIPT)
    history = ["Heat, Movies & TV|Drama, 4.0", "Alien, Movies & TV|Horror|Sci-Fi, 5.0", "Saw, Movies & TV|Horror, 1.0",
               "Up, Movies & TV|Kids, 3.0"]
    # mean 3.25; "Movies & TV" is on every line, so only Horror is shared: Alien 5, Saw 1 -> 3.0;
    # 0.7 * 3.25 + 0.3 * 3.0 = 3.175 -> 3
    # "counted" (the default): each list after its count
    assert ws.warm_start_completion(_messages(_user(history, "It, Movies & TV|Horror")), "movie") == (
        "<think>\nRecent ratings: (4) 4 5 1 3 (mean 3.2).\nSimilar movies: (2) 5 1 (mean 3.0).\n"
        "Estimate 3.2, so 3.\n</think>\n<answer>3.0</answer>"
    )
    # nothing shared: the mean alone; 4.5 rounds half UP (floor(m + 0.5)) to 5, Python's round(4.5) gives 4
    assert ws.warm_start_completion(_messages(_user(history[:2], "Cars, Movies & TV|Kids")), "movie") == (
        "<think>\nRecent ratings: (2) 4 5 (mean 4.5).\nNo similar movies.\nEstimate 4.5, so 5.\n</think>\n"
        "<answer>5.0</answer>"
    )
    # "prompt": the same lists without their counts
    assert ws.warm_start_completion(_messages(_user(history, "It, Movies & TV|Horror")), "movie", "prompt") == (
        "<think>\nRecent ratings: 4 5 1 3 (mean 3.2).\nSimilar movies: 5 1 (mean 3.0).\n"
        "Estimate 3.2, so 3.\n</think>\n<answer>3.0</answer>"
    )
    # "means": the same reasoning and estimate, with the means only (no list to lose count in)
    assert ws.warm_start_completion(_messages(_user(history, "It, Movies & TV|Horror")), "movie", "means") == (
        "<think>\nRecent ratings: mean 3.2.\nSimilar movies: mean 3.0.\n"
        "Estimate 3.2, so 3.\n</think>\n<answer>3.0</answer>"
    )
    assert ws.warm_start_completion(_messages(_user(history[:2], "Cars, Movies & TV|Kids")), "movie", "means") == (
        "<think>\nRecent ratings: mean 4.5.\nNo similar movies.\nEstimate 4.5, so 5.\n</think>\n"
        "<answer>5.0</answer>"
    )
    assert ws.round_half_up(3.5) == 4 and ws.round_half_up(2.5) == 3 and ws.round_half_up(3.49) == 3
    assert ws.warm_start_completion(_messages(_user(history, "It, Movies & TV|Horror")), "movie", "mean") == (
        "<think>\nRecent ratings average 3.3, so 3.\n</think>\n<answer>3.0</answer>")
    # No rated history line: 5.
    assert ws.warm_start_completion(_messages("The user has no earlier movie ratings.\n\nCandidate movie: Up")) == (
        "<think>\nNo earlier ratings; most ratings are 5.\n</think>\n<answer>5.0</answer>"
    )


def test_completion_is_well_formed_and_scored_as_the_ground_truth_is_written():
    from siren.answer import parse_response
    from siren.reward import compute_score

    ws = load_script(SCRIPT)
    text = ws.warm_start_completion(_messages(_user(["A, Drama, 1.0", "B, Drama, 2.0", "C, Drama, 2.0"], "X, Drama")))
    parsed = parse_response(text)
    assert parsed.format_ok and parsed.rating == 2.0 and "<answer>2.0</answer>" in text
    assert compute_score("AmazonReviews/Movies", text, "2.0")["score"] == 3.0


def test_missing_data_path_is_a_one_line_error(tmp_path, tiny_model_dir):
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(tmp_path / "nope"),
                      "--out_dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_end_to_end_writes_a_loadable_model(tmp_path, tiny_model_dir, verl_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    # --bf16 must reach the training forward: the loss calls the unwrapped decoder, past the
    # autocast accelerate puts around model.forward (it once did, and the flag changed nothing).
    real_from_pretrained = AutoModelForCausalLM.from_pretrained
    trained_dtypes = []

    def from_pretrained(*args, **kwargs):
        model = real_from_pretrained(*args, **kwargs)
        layer = model.get_decoder().layers[0].mlp.down_proj
        layer.register_forward_hook(lambda module, inputs, output: trained_dtypes.append(output.dtype)
                                    if torch.is_grad_enabled() else None)
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    out = tmp_path / "warm"
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--limit", "8",
                      "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
                      "--min_format_rate", "0", "--bf16", "--output_dir", str(out))
    monkeypatch.undo()
    assert "greedy format check" in proc.stdout
    assert trained_dtypes and set(trained_dtypes) == {torch.bfloat16}, trained_dtypes

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["bf16"] is True  # trained under bf16 autocast; the weights stay float32 (below)
    counts = manifest["counts"]
    assert counts["rows"] == 8 and counts["steps"] == 3
    assert 0.0 <= counts["format_ok_fraction"] <= 1.0
    assert len((out / "generations.jsonl").read_text().splitlines()) == 8
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith(".warm.")]  # no temp dir left

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers >= 1 and tokenizer.eos_token == "<|im_end|>"
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"

    again = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--out_dir", str(out),
                       check=False)
    assert_refused(again, "--overwrite")


@pytest.mark.slow
def test_a_warm_start_that_cannot_write_the_format_is_refused(tmp_path, tiny_model_dir, verl_dir):
    """1 step at 1e-4 leaves the random model unable to write the format: one line, nothing written."""
    out = tmp_path / "warm"
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--limit", "4",
                      "--max_steps", "1", "--per_device_train_batch_size", "4", "--max_new_tokens", "4",
                      "--output_dir", str(out), check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == errors[0]
    assert len(errors) == 1 and errors[0].startswith("error: the warm start left 0 of 4 rows well formed")
    assert "--min_format_rate 0.9" in errors[0] and "lower --learning_rate (0.0001)" in errors[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".warm")]


def test_rows_are_spread_over_the_split():
    ws = load_script(SCRIPT)
    rows = [{"i": i} for i in range(10)]
    assert [r["i"] for r in ws.spread_rows(rows, 4)] == [0, 2, 5, 7]
    assert ws.spread_rows(rows, None) == rows and ws.spread_rows(rows, 20) == rows


def test_bad_numbers_are_refused_before_loading(capsys):
    ws = load_script(SCRIPT)
    for flag, value in (("--learning_rate", "-1"), ("--min_format_rate", "1.5")):
        args = ws.parse_args(["--model", "m", "--data_path", "d", "--output_dir", "o", flag, value])
        with pytest.raises(SirenError, match=flag):
            ws.validate(args)
    with pytest.raises(SystemExit) as stop:  # nan or inf: the stage parser, for every number flag
        ws.parse_args(["--model", "m", "--data_path", "d", "--output_dir", "o", "--learning_rate", "nan"])
    assert stop.value.code == 2 and "argument --learning_rate: must be a finite number, got nan" in capsys.readouterr().err


def test_canonical_flags_and_their_old_names():
    ws = load_script(SCRIPT)
    canonical = ws.parse_args(["--model", "m", "--data_path", "d", "--output_dir", "o", "--split", "valid",
                               "--per_device_train_batch_size", "4"])
    old = ws.parse_args(["--model_path", "m", "--data_path", "d", "--out_dir", "o", "--split", "val", "--batch_size", "4"])
    assert vars(canonical) == vars(old)
    assert (canonical.split, canonical.limit, canonical.per_device_train_batch_size) == ("valid", 64, 4)
    with pytest.raises(SystemExit):
        ws.parse_args(["--data_path", "d", "--output_dir", "o", "--max_steps", "0"])
