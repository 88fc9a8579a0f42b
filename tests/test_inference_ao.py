"""inference_ao_ddp.py and siren.answer_only: decoding on literal logits, metrics on literal arrays, end to
end on the tiny model from a 4c DatasetDict and from a parquet directory, 2 processes = 1 process
(within BATCHING_TOLERANCE), the flags (the authors' included), and the refusals of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_refused, in_process_device, load_script, run_in_process
from stage_inputs import build_ao_dataset

from siren import SirenError
from siren.answer_only import BATCHING_TOLERANCE, default_out_dir, parse_greedy_token, prediction_metrics
from siren.modeling import constrained_ratings, expected_ratings, rating_probabilities

SCRIPT = "inference_ao_ddp.py"
RATING_IDS = {1: 10, 2: 11, 3: 12, 4: 13, 5: 14}  # a made-up vocabulary of 20 tokens
# The script runs compared with each other (datasets folder, parquet input, compiled engine) run in
# this process, in float32, on its device: the CPU here (test_end_to_end_on_cuda is the GPU's own check).


# --------------------------------------------------------------------------------------------------
# Decoding and metrics on literal values


def test_constrained_and_expected_on_literal_logits():
    logits = torch.full((2, 20), -1e4)
    logits[0, 19] = 50.0  # a non-rating token is the overall argmax: ignored by constrained decoding
    logits[0, 13] = 3.0   # "4"
    logits[1, 10] = logits[1, 14] = 0.0  # "1" and "5" equally likely
    probs = rating_probabilities(logits, RATING_IDS)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert constrained_ratings(probs).tolist() == [4.0, 1.0]  # ties go to the first maximum
    assert torch.allclose(expected_ratings(probs), torch.tensor([4.0, 3.0]), atol=1e-4)


def test_constrained_decoding_is_never_invalid():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 20, generator=generator) * 30
    predictions = constrained_ratings(rating_probabilities(logits, RATING_IDS))
    assert set(predictions.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    expected = expected_ratings(rating_probabilities(logits, RATING_IDS))
    assert bool(((expected >= 1.0) & (expected <= 5.0)).all())


@pytest.mark.parametrize("text, rating", [
    ("4", 4.0), (" 5", 5.0), ("1", 1.0), ("3.", 3.0),
    ("0", None), ("7", None), ("<", None), ("</", None), ("five", None), ("", None), ("\n", None),
])
def test_greedy_token_parsing(text, rating):
    assert parse_greedy_token(text) == rating


def test_metrics_on_literal_arrays():
    labels = [5.0, 4.0, 1.0, 5.0]
    predictions = [5.0, None, 2.0, 4.0]  # one invalid
    expected = [4.5, 4.0, 1.5, 5.0]
    filled = prediction_metrics(predictions, expected, labels, invalid_fill=5.0)
    ao = filled["ao"]
    assert ao["n_invalid"] == 1 and ao["invalid_fill"] == 5.0
    assert ao["mae"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert ao["rmse"] == pytest.approx((3 / 4) ** 0.5)
    assert ao["acc"] == pytest.approx(0.25)
    assert ao["per_label"]["5.0"]["mae"] == pytest.approx(0.5) and ao["per_label"]["4.0"]["n_invalid"] == 1
    row = filled["ao_expected"]
    assert row["n_invalid"] == 0
    assert row["mae"] == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert row["rmse"] == pytest.approx((0.5 / 4) ** 0.5)
    dropped = prediction_metrics(predictions, expected, labels, invalid_fill=None)["ao"]
    assert dropped["mae"] == pytest.approx(2 / 3) and dropped["n_invalid"] == 1


def test_default_out_dir_follows_model_and_split():
    assert default_out_dir("ckpt/AO_Movies_HA/merged", None, "test", "constrained") == Path(
        "results_ao/AO_Movies_HA/test-constrained")
    assert default_out_dir("ckpt/GRPO_Movies_step100", "ckpt/AO_x/adapter", "valid", "greedy") == Path(
        "results_ao/GRPO_Movies_step100+AO_x/valid-greedy")


# --------------------------------------------------------------------------------------------------
# The script


@pytest.fixture(scope="module")
def ao_data(verl_dir, tiny_model_dir, tmp_path_factory):
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    return build_ao_dataset(verl_dir, tokenizer, tmp_path_factory.mktemp("ao") / "hidden", (4, 4, 10), tiny_model_dir)


def _predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(ao_data, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ao-out") / "one"
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data), "--out_dir", str(out),
                          "--batch_size", "4", "--dtype", "float32")
    return out, proc


@pytest.mark.slow
def test_end_to_end_constrained(one_process):
    out, proc = one_process
    predictions = _predictions(out)
    assert len(predictions) == 10
    assert [p["index"] for p in predictions] == list(range(10))
    assert all(p["valid"] and p["prediction"] in (1.0, 2.0, 3.0, 4.0, 5.0) for p in predictions)
    assert all(1.0 <= p["expected_rating"] <= 5.0 and abs(sum(p["probs"].values()) - 1) < 1e-4 for p in predictions)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["predictions"]) == {"ao", "ao_expected"}
    assert metrics["predictions"]["ao"]["n_invalid"] == 0 and metrics["predictions"]["ao"]["n"] == 10
    assert {"mae", "rmse", "acc", "per_label"} <= set(metrics["predictions"]["ao_expected"])
    latency = metrics["latency"]
    assert {"ms_per_sample", "samples_per_s", "generated_tokens_per_sample", "device", "n"} <= set(latency)
    assert latency["generated_tokens_per_sample"] == 1 and latency["n"] == 10
    assert latency["device"] == in_process_device()
    assert (latency["engine"], latency["batch_size"], latency["dtype"]) == ("eager", 4, "float32")
    assert latency["warmup_seconds"] > 0 and metrics["engine"]["engine"] == "eager"
    assert json.loads((out / "manifest.json").read_text())["counts"]["rows"] == 10
    assert "MAE" in proc.stdout and "wrote" in proc.stdout


@pytest.mark.gpu
def test_end_to_end_on_cuda(ao_data, tiny_model_dir, tmp_path):
    import torch

    out = tmp_path / "cuda"
    run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data), "--out_dir", str(out),
               "--batch_size", "4")
    predictions = _predictions(out)
    assert len(predictions) == 10 and all(p["valid"] for p in predictions)
    latency = json.loads((out / "metrics.json").read_text())["latency"]
    assert latency["device"] == f"cuda ({torch.cuda.get_device_name(0)})"


@pytest.mark.slow
def test_parquet_directory_gives_the_same_predictions(one_process, verl_dir, tiny_model_dir, tmp_path):
    out, _ = one_process
    run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--out_dir", str(tmp_path / "pq"),
                   "--max_samples", "10", "--batch_size", "3", "--dtype", "float32")
    ours, theirs = _predictions(out), _predictions(tmp_path / "pq")
    assert [p["prediction"] for p in ours] == [p["prediction"] for p in theirs]
    for a, b in zip(ours, theirs, strict=True):  # batches of 4 there, 3 here: other padding
        assert a["expected_rating"] == pytest.approx(b["expected_rating"], abs=BATCHING_TOLERANCE)


@pytest.mark.slow
def test_greedy_counts_invalid_outputs(ao_data, tiny_model_dir, tmp_path):
    out = tmp_path / "greedy"
    run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data), "--out_dir", str(out),
               "--decode", "greedy", "--invalid_fill", "5.0")
    predictions = _predictions(out)
    ao = json.loads((out / "metrics.json").read_text())["predictions"]["ao"]
    invalid = [p for p in predictions if not p["valid"]]
    assert ao["n_invalid"] == len(invalid) and ao["invalid_fill"] == 5.0
    assert all(p["prediction"] is None and "generated_text" in p for p in invalid)
    assert all(p["prediction"] == parse_greedy_token(p["generated_text"]) for p in predictions)


def _prompt_lengths(ao_data, tiny_model_dir) -> list[int]:
    from datasets import load_from_disk

    from siren.tokenization import count_tokens, load_tokenizer

    return count_tokens(load_tokenizer(tiny_model_dir), list(load_from_disk(str(ao_data))["test"]["prompt"]))


@pytest.mark.slow
def test_compiled_engine_gives_the_eager_ratings(one_process, ao_data, tiny_model_dir, tmp_path):
    """Issue 12: the compiled engine (static length buckets and batch size) decodes as the eager one.
    aot_eager captures the static-shape graphs without a code generator: seconds on a CPU.
    Issue 20: the 3 longest rows exceed the largest bucket and run eagerly; they are counted once
    each, and a note says so."""
    out, _ = one_process
    compiled = tmp_path / "compiled"
    lengths = sorted(_prompt_lengths(ao_data, tiny_model_dir))
    largest = lengths[-4]  # the 3 longest of the 10 rows do not fit
    assert lengths[-3] > largest
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data), "--output_dir",
                          str(compiled), "--batch_size", "4", "--dtype", "float32", "--engine", "compiled",
                          "--compile_backend", "aot_eager", "--buckets", "128", str(largest))
    eager, ours = _predictions(out), _predictions(compiled)
    assert [p["prediction"] for p in ours] == [p["prediction"] for p in eager]
    for a, b in zip(eager, ours, strict=True):  # the padded width differs (bucket vs longest row)
        assert a["probs"] == pytest.approx(b["probs"], abs=BATCHING_TOLERANCE)
    metrics = json.loads((compiled / "metrics.json").read_text())
    engine, latency = metrics["engine"], metrics["latency"]
    assert latency["engine"] == "compiled" and latency["warmup_seconds"] > 0
    assert engine["buckets"] == [128, largest] and engine["batch_size"] == 4 and engine["fallback_rows"] == 3
    assert engine["compiled_shapes"] and all(shape[0] == 4 for shape in engine["compiled_shapes"])
    assert f"note: 3 of 10 rows are longer than the largest bucket ({largest} tokens) and run eagerly" in proc.stdout


def test_compiled_engine_with_buckets_most_rows_exceed_is_refused(ao_data, tiny_model_dir, tmp_path, capsys):
    """Issue 20: `--buckets 16 32` ran every row eagerly under the name "compiled"; now one line,
    before the model loads, and nothing written."""
    from siren.cli import run_main

    script = load_script(SCRIPT)
    argv = ["--model", str(tiny_model_dir), "--data_path", str(ao_data), "--output_dir", str(tmp_path / "out"),
            "--engine", "compiled", "--buckets", "16", "32"]
    assert run_main(lambda: script.main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 10 of 10 rows are longer than the largest --buckets value (32 tokens; the longest "
                          "has ") and err.endswith(", or use --engine eager\n") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["compiled", "vllm"])
def test_fast_engines_on_cuda_give_the_eager_ratings(engine, ao_data, tiny_model_dir, tmp_path):
    """On a GPU: compiled (inductor, CUDA graphs) and vLLM (rating tokens only) against eager, all float32."""
    if engine == "vllm":
        pytest.importorskip("vllm")
    runs = {}
    for name in ("eager", engine):
        out = tmp_path / name
        run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data), "--output_dir", str(out),
                   "--batch_size", "4", "--dtype", "float32", "--engine", name)
        runs[name] = _predictions(out)
    assert [p["prediction"] for p in runs[engine]] == [p["prediction"] for p in runs["eager"]]
    for a, b in zip(runs["eager"], runs[engine], strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-4)  # GPU kernels differ by more than CPU ones
    latency = json.loads((tmp_path / engine / "metrics.json").read_text())["latency"]
    assert latency["engine"] == engine and latency["device"].startswith("cuda")


def test_vllm_engine_refusals(ao_data, tiny_model_dir, tmp_path):
    _fails(["--model", str(tiny_model_dir), "--data_path", str(ao_data), "--engine", "vllm", "--adapter", "x"],
           "--engine vllm scores a merged model's rating tokens only", tmp_path / "a")
    _fails(["--model", str(tiny_model_dir), "--data_path", str(ao_data), "--engine", "vllm", "--decode", "greedy"],
           "--engine vllm scores a merged model's rating tokens only", tmp_path / "b")


@pytest.mark.slow
def test_refuses_to_overwrite(one_process, ao_data, tiny_model_dir):
    out, _ = one_process
    assert_refused(run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data), "--out_dir",
                                  str(out), check=False), "already exists")


def _fails(args: list[str], expected: str, out: Path):
    assert_refused(run_in_process(SCRIPT, *args, "--out_dir", str(out), check=False), expected)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_tokenizer_without_single_token_ratings(ao_data, tiny_model_dir, tmp_path):
    """A SentencePiece-style tokenizer that writes "3" as "▁" + "3" must be refused, naming "3"."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "▁": 2, "3": 3, **{f"▁{d}": 3 + d for d in (1, 2, 4, 5)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    backend.pre_tokenizer = pre_tokenizers.Sequence([backend.pre_tokenizer, pre_tokenizers.Split("▁", "isolated")])
    weird = tmp_path / "weird"
    shutil.copytree(tiny_model_dir, weird)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (weird / name).unlink(missing_ok=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(weird)
    # without 4c's manifest, which would refuse the other tokenizer first (test_prompts_built_with_another_tokenizer)
    data = shutil.copytree(ao_data, tmp_path / "hidden")
    (data / "manifest.json").unlink()
    _fails(["--model", str(weird), "--data_path", str(data)], "rating strings 1, 2, 3, 4, 5 are not single tokens",
           tmp_path / "out")


@pytest.mark.slow
def test_adapter_for_a_different_base(ao_data, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    other = Qwen3ForCausalLM(Qwen3Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    adapter = get_peft_model(other, LoraConfig(r=2, target_modules=["k_proj", "v_proj"], task_type="CAUSAL_LM"))
    adapter.save_pretrained(str(tmp_path / "adapter"))
    _fails(["--model", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"), "--data_path", str(ao_data)],
           "does not fit this base model", tmp_path / "out")


def test_bad_data_path_and_split(ao_data, tiny_model_dir, tmp_path):
    _fails(["--model", str(tiny_model_dir), "--data_path", str(tmp_path)], "neither a stage-4c DatasetDict",
           tmp_path / "out")
    # --split is checked by argparse now: its own one-line error, exit status 2
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data), "--split", "holdout",
                      "--out_dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and "unknown split 'holdout'" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Flags, and the checks added for issues 13 and 14


def test_the_authors_flags_and_the_canonical_names_parse():
    script = load_script(SCRIPT)
    authors = script.parse_args(["--model", "ckpt/AO_Movies_HA/merged", "--data_path", "data/Movies/hidden/x"])
    assert authors.model == "ckpt/AO_Movies_HA/merged" and authors.data_path == "data/Movies/hidden/x"
    assert authors.split == "test" and authors.limit is None and authors.output_dir is None and authors.batch_size == 16
    canonical = script.parse_args(["--model", "m", "--data_path", "d", "--output_dir", "o", "--limit", "5",
                                   "--split", "valid"])
    aliases = script.parse_args(["--model", "m", "--data_path", "d", "--out_dir", "o", "--max_samples", "5",
                                 "--split", "val"])
    assert vars(canonical) == vars(aliases)


def test_one_row_alone_and_in_a_padded_batch_agree_within_the_tolerance(ao_data, tiny_model_dir, one_thread):
    """What any two batch sizes (or engines) differ by: the padded width of a row's batch."""
    from siren.answer_only_data import load_ao_rows
    from siren.answer_only_engines import EagerAO
    from siren.modeling import constrained_ratings, load_causal_lm
    from siren.tokenization import load_tokenizer, rating_token_ids

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    ratings = rating_token_ids(tokenizer)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    prompts = [row["prompt"] for row in load_ao_rows(ao_data, "test", tokenizer)]
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    engine = EagerAO(model, tokenizer, ratings)
    batched = engine.score(prompts).rating_probs
    for i in (j for j in range(len(prompts)) if j != longest):
        alone = engine.score([prompts[i]]).rating_probs
        assert (alone[0] - batched[i]).abs().max().item() <= BATCHING_TOLERANCE
        assert constrained_ratings(alone).item() == constrained_ratings(batched[i:i + 1]).item()


def _adapter_on(base_dir: Path, out: Path, record_base: bool = True) -> Path:
    """A LoRA adapter on `base_dir` saved the way stage 5 saves it (base_model.json with the base's record)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from siren.alignment import save_adapter
    from siren.modeling import adapter_base_record, base_fingerprint

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["k_proj", "v_proj"], task_type="CAUSAL_LM"))
    record = adapter_base_record(base_dir, model.config) if record_base else base_fingerprint(model.config)
    save_adapter(peft_model, out, record)
    return out


def _same_shape_other_weights(tiny_model_dir: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from siren.tokenizer_identity import copy_tokenizer_files

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)
    model.save_pretrained(str(out))
    copy_tokenizer_files(tiny_model_dir, out)
    return out


@pytest.mark.slow
def test_adapter_on_a_base_with_the_same_shape_but_other_weights(ao_data, tiny_model_dir, tmp_path):
    adapter = _adapter_on(tiny_model_dir, tmp_path / "adapter")
    other = _same_shape_other_weights(tiny_model_dir, tmp_path / "other")
    _fails(["--model", str(other), "--adapter", str(adapter), "--data_path", str(ao_data)],
           f"adapter {adapter} was trained on {tiny_model_dir.resolve()}, not {other.resolve()} (weights_digest differs)",
           tmp_path / "out")
    # an older adapter, without the base's weights recorded: accepted with a note (its shapes still checked)
    older = _adapter_on(tiny_model_dir, tmp_path / "older", record_base=False)
    proc = run_in_process(SCRIPT, "--model", str(other), "--adapter", str(older), "--data_path", str(ao_data),
                          "--limit", "2", "--output_dir", str(tmp_path / "older_out"))
    assert "note: adapter" in proc.stdout and "checked by its shapes only" in proc.stdout
    assert len(_predictions(tmp_path / "older_out")) == 2


def test_prompts_built_with_another_tokenizer(ao_data, tiny_model_dir, tmp_path):
    hidden = tmp_path / "hidden"
    shutil.copytree(ao_data, hidden)
    manifest = json.loads((hidden / "manifest.json").read_text())
    manifest["model"]["tokenizer"]["chat_template_sha256"] = "0" * 64
    manifest["model"]["path"] = "/elsewhere/Qwen3-4B"
    (hidden / "manifest.json").write_text(json.dumps(manifest))
    _fails(["--model", str(tiny_model_dir), "--data_path", str(hidden)],
           f"the answer-only prompts in {hidden} were built with the tokenizer of /elsewhere/Qwen3-4B, not "
           f"{tiny_model_dir.resolve()} (tokenizer.chat_template_sha256", tmp_path / "out")


@pytest.mark.slow
def test_prompts_without_a_manifest_are_a_note(ao_data, tiny_model_dir, tmp_path):
    hidden = tmp_path / "hidden"
    shutil.copytree(ao_data, hidden)
    (hidden / "manifest.json").unlink()
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(hidden), "--limit", "2",
                          "--output_dir", str(tmp_path / "out"))
    assert f"note: {hidden} has no manifest.json" in proc.stdout
    assert len(_predictions(tmp_path / "out")) == 2


def test_output_path_that_is_a_file(ao_data, tiny_model_dir, tmp_path):
    (tmp_path / "taken").write_text("a file")
    proc = run_in_process(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(ao_data),
                      "--output_dir", str(tmp_path / "taken"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is an existing file, not a folder" in proc.stderr and (tmp_path / "taken").read_text() == "a file"


def test_input_that_is_not_a_parquet(verl_dir, tiny_model_dir, tmp_path):
    bad = tmp_path / "max@10-long@False"
    shutil.copytree(verl_dir, bad)
    (bad / "test.parquet").write_bytes(b"PAR1 not really")
    _fails(["--model", str(tiny_model_dir), "--data_path", str(bad)], "test.parquet", tmp_path / "out")


def test_outputs_among_the_inputs_or_data_of_another_kind_are_refused(ao_data, tiny_model_dir, tmp_path):
    """Issue 20: no stage writes where its inputs are; an input's manifest names the stage that made it."""
    from siren.io import write_manifest

    script = load_script(SCRIPT)
    base = ["--model", str(tiny_model_dir), "--data_path", str(ao_data)]
    before = (ao_data / "manifest.json").read_bytes()
    for out, where in ((ao_data, "is"), (ao_data / "test", "lies inside"), (tiny_model_dir / "preds", "lies inside")):
        with pytest.raises(SirenError, match=rf"\(--output_dir\) {where} this stage's input"):
            script.main([*base, "--out_dir", str(out), "--overwrite"])
    assert (ao_data / "manifest.json").read_bytes() == before and not (tiny_model_dir / "preds").exists()
    other = tmp_path / "hidden"
    shutil.copytree(ao_data, other)
    write_manifest(other, script="extract_last_hidden_ddp.py", args={})
    with pytest.raises(SirenError, match=r"--data_path .*hidden was written by extract_last_hidden_ddp\.py, not "
                                         r"preprocess_hidden\.py or preprocess_grpo\.py"):
        script.main(["--model", str(tiny_model_dir), "--data_path", str(other), "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
