"""The TRL backend of stage 3 (grpo_trl.py, siren.grpo_trl), also run through main_grpo_amazon.sh with BACKEND=trl."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_refused, model_of_the_4b_shape, run_in_process
from test_grpo_launcher import trl_command

from siren import SirenError
from siren.grpo_trl import fit_device, load_grpo_split, output_name, parse_args, validate
from siren.reward import trl_reward


@pytest.fixture(scope="module")
def short_prompt_dir(synthetic_root, tmp_path_factory) -> Path:
    """Parquet files with one history line and 4 rows per split.

    On CPU, TRL 1.16 scores every prompt position against the 151k-token vocabulary, so short
    prompts keep the two GRPO steps fast.
    """
    sys.path.insert(0, str(REPO))
    import preprocess_grpo

    out = tmp_path_factory.mktemp("grpo_data") / "max@1-long@False"
    preprocess_grpo.main(["--data_root", str(synthetic_root), "--max_history", "1", "--use_long_history", "false",
                          "--limit", "4", "--output_dir", str(out)])
    return out


def _trl_env(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> dict:
    """The launcher's settings of the two-step run (trl_command adds BACKEND=trl)."""
    return {
        "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(data_dir), "DATA_NAME": "Movies",
        "CKPT_DIR": str(tmp_path / "ckpt"),
        "TRAINER_DIR": str(tmp_path / "trainer"), "MAX_STEPS": "2", "ROLLOUT_N": "2", "BATCH_SIZE": "1",
        "MICRO_BATCH_SIZE": "2", "MAX_RESPONSE_LENGTH": "4", "SAVE_FREQ": "2", "TEST_FREQ": "2", "LORA_RANK": "4",
    }


@pytest.mark.slow
def test_trl_backend_two_steps_on_cpu(tiny_model_dir, short_prompt_dir, tmp_path):
    """The command the launcher runs with BACKEND=trl, run in this process (the launcher then only
    execs it; the reduced demo runs it through the launcher for real)."""
    env = _trl_env(tiny_model_dir, short_prompt_dir, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("beta: 0.01\ntemperature: 0.9\n")  # beats grpo_trl.py's defaults (0.001, 1.0)
    extra = ["--val_limit", "1", "--gradient_checkpointing", "false", "--config", str(recipe)]
    args = trl_command(env, tmp_path, *extra)
    proc = run_in_process("grpo_trl.py", *args, cwd=tmp_path)
    out = tmp_path / "ckpt" / output_name("Movies", 2)
    assert "'reward'" in proc.stdout + proc.stderr  # TRL's console log line carries the mean reward
    assert f"wrote {out}" in proc.stdout and "LoRA merged" in proc.stdout
    assert "in micro batches of 2 sequences, 2 sequences per generate()" in proc.stdout

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train_rewards = [entry["reward"] for entry in log if "reward" in entry]
    assert len(train_rewards) == 2 and all(-3.0 <= r <= 3.0 for r in train_rewards)
    assert any("eval_reward" in entry for entry in log)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == 2 and manifest["backend"] == "trl" and manifest["script"] == "grpo_trl.py"
    args = manifest["args"]
    assert args["num_generations"] == 2 and args["beta"] == 0.01 and args["temperature"] == 0.9
    assert args["per_device_train_batch_size"] == 2 and args["gradient_accumulation_steps"] == 1
    assert args["use_peft"] is True and args["lora_r"] == 4
    assert args["user_given"]["beta"] == f"--config {recipe}" and args["user_given"]["num_generations"] == \
        "--num_generations"
    # TRL's own checkpoint (SAVE_FREQ=2) went to TRAINER_DIR, with the pickled config (training_args.bin).
    assert (tmp_path / "trainer" / "checkpoint-2" / "training_args.bin").is_file()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    ids = tokenizer("<think>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size

    # finished output is not replaced; the check happens before any model is loaded
    again = run_in_process("grpo_trl.py", *trl_command(env, tmp_path), cwd=tmp_path, check=False)
    assert_refused(again, "already exists")


def test_dataset_columns_feed_the_reward(short_prompt_dir, tiny_model_dir):
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    dataset, dropped = load_grpo_split(short_prompt_dir, "train", tokenizer, max_prompt_length=4096)
    assert dropped == 0 and len(dataset) == 4
    assert set(dataset.column_names) == {"prompt", "ground_truth", "data_source", "index"}
    assert dataset["index"] == [0, 1, 2, 3]
    assert [m["role"] for m in dataset[0]["prompt"]] == ["system", "user"]
    truth = dataset["ground_truth"]
    # GRPOTrainer passes the non-prompt columns to the reward as keyword lists
    completions = [[{"role": "assistant", "content": f"<think>ok</think><answer>{t}</answer>"}] for t in truth]
    assert trl_reward(prompts=dataset["prompt"], completions=completions, ground_truth=truth,
                      data_source=dataset["data_source"], index=dataset["index"]) == [3.0] * 4

    short, dropped = load_grpo_split(short_prompt_dir, "train", tokenizer, max_prompt_length=10)
    assert len(short) == 0 and dropped == 4


def test_bad_inputs_are_clear_errors(short_prompt_dir, tiny_model_dir, tmp_path):
    base = ["--model_path", str(tiny_model_dir), "--data_dir", str(short_prompt_dir), "--output_dir", str(tmp_path)]
    # TRL counts completions: a generation batch of 3 cannot hold whole groups of 2 (GRPOConfig's own check)
    with pytest.raises(SirenError, match=r"generation_batch_size \(3\) must be divisible by num_generations \(2\)"):
        parse_args(base + ["--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "1",
                           "--num_generations", "2", "--eval_strategy", "no"])
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "train.parquet").write_bytes((short_prompt_dir / "train.parquet").read_bytes())
    with pytest.raises(SirenError, match="missing parquet split: .*val.parquet"):
        validate(*parse_args(["--model_path", str(tiny_model_dir), "--data_dir", str(only_train)]))
    with pytest.raises(SirenError, match="not a model folder"):
        validate(*parse_args(["--model_path", str(tmp_path), "--data_dir", str(short_prompt_dir)]))
    with pytest.raises(SirenError, match="give --model"):
        validate(*parse_args(["--data_dir", str(short_prompt_dir)]))
    with pytest.raises(SirenError, match="--report_to: unknown integration 'bogus'"):
        validate(*parse_args(base + ["--report_to", "bogus"]))
    with pytest.raises(SirenError, match="--load_in_4bit/--load_in_8bit are not supported"):
        validate(*parse_args(base + ["--use_peft", "true", "--load_in_8bit", "true"]))
    with pytest.raises(SirenError, match=r"--lora_r is read with --use_peft true only \(LoRA is off"):
        validate(*parse_args(base + ["--lora_r", "8"]))  # ModelConfig would train the full model
    (tmp_path / output_name("Movies", 5)).mkdir()
    with pytest.raises(SirenError, match="already exists"):
        validate(*parse_args(base + ["--max_steps", "5"]))
    validate(*parse_args(base + ["--max_steps", "5", "--overwrite"]))


BAD_NUMBERS = [
    (["--temperature", "nan"], "--temperature must be a finite number > 0, got nan"),  # issue 20: ran greedy
    (["--temperature", "0"], "--temperature must be a finite number > 0, got 0.0"),
    (["--top_p", "1.5"], "--top_p must be a finite number > 0 and <= 1, got 1.5"),
    (["--beta=-1"], "--beta must be a finite number >= 0, got -1.0"),
    (["--learning_rate", "inf"], "--learning_rate must be a finite number > 0, got inf"),
    (["--weight_decay=-1"], "--weight_decay must be a finite number >= 0, got -1.0"),
    (["--warmup_steps=-5"], "--warmup_steps must be a finite number >= 0, got -5.0"),  # not "an integer or a float"
    (["--max_completion_length", "0"], "--max_completion_length must be a whole number >= 1, got 0"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be a whole number >= 1, got 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a whole number >= 1, got 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs must be a finite number > 0, got 0.0"),
    (["--limit", "0"], "--limit must be a whole number >= 1, got 0"),
    (["--lora_dropout", "1"], "--lora_dropout must be a finite number >= 0 and < 1, got 1.0"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number >= 0, got nan"),
    (["--epsilon_high", "nan"], "--epsilon_high must be a finite number, got nan"),  # every float is finite
]


@pytest.mark.parametrize("argv, message", BAD_NUMBERS)
def test_numbers_are_range_checked_before_anything_loads(argv, message):
    with pytest.raises(SirenError) as refused:
        parse_args(["--model", "m", *argv])
    assert str(refused.value) == message


def test_training_settings_are_library_fields_and_the_old_names_are_aliases(tmp_path):
    """TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig)): HF names for training and the model, SIREN
    names (with the authors'/old names as aliases) for the rest; --output_dir is where GRPO_{data_name}_step{S} goes."""
    canonical = parse_args(["--model", "m", "--data_path", "d", "--output_dir", "out", "--limit", "5",
                            "--eval_limit", "3", "--use_peft", "true", "--lora_r", "8", "--learning_rate", "2e-6",
                            "--num_train_epochs", "1", "--save_steps", "7", "--eval_steps", "9", "--run_name", "r"])
    aliases = parse_args(["--model_path", "m", "--data_dir", "d", "--out_dir", "out", "--train_limit", "5",
                          "--val_limit", "3", "--use_peft", "true", "--lora_rank", "8", "--learning_rate", "2e-6",
                          "--num_train_epochs", "1", "--save_steps", "7", "--eval_steps", "9", "--run_name", "r"])
    assert canonical[1].to_dict() == aliases[1].to_dict() and canonical[2] == aliases[2]
    script, config, model = canonical
    assert (model.model_name_or_path, script.data_path, script.limit, script.eval_limit) == ("m", "d", 5, 3)
    assert (model.use_peft, model.lora_r, model.lora_target_modules) == (True, 8, "all-linear")
    assert script.checkpoint_dir == str(Path("out") / "trl" / "r")
    assert (config.output_dir, config.learning_rate, config.num_train_epochs) == ("out", 2e-6, 1)
    assert (config.save_steps, config.eval_steps, config.run_name) == (7, 9, "r")
    # the stage's defaults: verl's settings; batch sizes count sequences; float32 weights
    script, config, model = parse_args(["--model", "m"])
    assert (config.learning_rate, config.beta, config.num_generations, config.num_train_epochs) == (1e-6, 0.001, 8, 2)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (4, 64)
    assert config.per_device_eval_batch_size == 8  # whole groups of 8 generations
    assert (config.output_dir, config.run_name, script.checkpoint_dir) == ("ckpt", "GRPO_Movies",
                                                                           str(Path("ckpt/trl/GRPO_Movies")))
    assert (script.eval_limit, model.use_peft, model.dtype, script.max_prompt_length) == (256, False, "float32", 2048)
    assert script.data_path == "data/Movies/verl/max@10-long@True"
    assert parse_args(["--category", "Books", "--max_history", "30"])[0].data_path == "data/Books/verl/max@30-long@True"
    script, config, _ = parse_args(["--prompts_per_step", "2", "--num_generations", "4", "--per_device_train_batch_size",
                                    "8"])
    assert config.gradient_accumulation_steps == 1 and config.per_device_eval_batch_size == 8


def test_a_yaml_recipe_sets_any_field(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data_name: Books\nlearning_rate: 3.0e-6\nbeta: 0\nuse_peft: true\nlora_r: 4\n"
                      "max_completion_length: 64\nlora_target_modules: [q_proj, v_proj]\nenv:\n  SIREN_RECIPE_TEST: 1\n")
    script, config, model = parse_args(["--model", "m", "--config", str(recipe), "--temperature", "0.7"])
    assert (script.data_name, config.run_name, script.checkpoint_dir) == ("Books", "GRPO_Books",
                                                                          str(Path("ckpt/trl/GRPO_Books")))
    assert (config.learning_rate, config.beta, config.max_completion_length, config.temperature) == (3e-6, 0, 64, 0.7)
    assert (model.use_peft, model.lora_r, model.lora_target_modules) == (True, 4, ["q_proj", "v_proj"])
    assert os.environ.pop("SIREN_RECIPE_TEST") == "1"  # TRL's recipes may set environment variables
    assert set(script.user_given) == {"data_name", "learning_rate", "beta", "use_peft", "lora_r",
                                      "max_completion_length", "lora_target_modules", "model_name_or_path",
                                      "temperature"}


RECIPE_ERRORS = [
    ("beta: [1,2]\n", r"--config \S+: beta takes one value, got the list \[1, 2\]"),
    ("beta: 0.1\n  nested: : [\n", r"--config \S+ is not valid YAML \(line 2, column \d+\): mapping values are not"),
    ("learning_rate: abc\n", r"argument --learning_rate/--learning-rate: invalid float value: 'abc'"),
    ("temperature: .nan\n", r"--temperature must be a finite number > 0, got nan \(in \S+\.yaml\)"),
    ("no_such_setting: 1\n", r"--config \S+: unknown setting 'no_such_setting'"),
    ("max_steps: null\n", r"--config \S+: max_steps is null; leave the key out"),
    ("- beta\n- 0.1\n", r"--config \S+ must hold a YAML mapping of setting: value, got list"),
    ("prompts_per_step: 4\ngradient_accumulation_steps: 2\n", r"prompts_per_step \(--config .*\) and "
                                                             r"gradient_accumulation_steps \(--config .*\) set the same"),
]


@pytest.mark.parametrize("text, message", RECIPE_ERRORS)
def test_recipe_errors_are_one_line(text, message, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(SirenError, match=message) as refused:
        parse_args(["--model", "m", "--config", str(recipe)])
    assert "\n" not in str(refused.value)
    with pytest.raises(SirenError, match="--config needs a YAML recipe file"):
        parse_args(["--config", str(tmp_path / "no_recipe.yaml")])
    with pytest.raises(SirenError, match="--config is given twice"):
        parse_args(["--config", str(recipe), "--config", str(recipe)])


def test_two_values_for_one_setting_are_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("beta: 0.1\n")
    with pytest.raises(SirenError, match=r"^beta is given twice: in \S+recipe\.yaml and as --beta on the command line"):
        parse_args(["--config", str(recipe), "--beta", "0.2"])
    with pytest.raises(SirenError, match=r"^model_name_or_path is given twice on the command line \(--model and "
                                         r"--model_path\)"):
        parse_args(["--model", "a", "--model_path", "b"])
    with pytest.raises(SirenError, match="unrecognized arguments: --learning_rat"):  # no prefix matching
        parse_args(["--learning_rat", "1e-5"])


def test_a_bad_recipe_through_the_entry_point_is_one_line_before_any_folder(tiny_model_dir, short_prompt_dir, tmp_path):
    """Issue 20: `beta: [1,2]` trained until step 1, left empty folders and a traceback."""
    recipe = tmp_path / "recipe.yaml"
    for text, message in (("beta: [1,2]\n", "beta takes one value"), ("beta: [1,\n", "is not valid YAML")):
        recipe.write_text(text)
        before = sorted(tmp_path.iterdir())
        proc = run_in_process("grpo_trl.py", "--model", str(tiny_model_dir), "--data_path", str(short_prompt_dir),
                              "--config", str(recipe), cwd=tmp_path, check=False)
        assert assert_refused(proc, message, only_line=True).startswith("--config ")
        assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("argv, message", [
    (["--data_name", "../../x"], "--data_name '../../x' is not a name"),  # GRPO_../../x_step2 lay outside --output_dir
    (["--category", "../slice/Movies"], "category '../slice/Movies' is not a name"),
    (["--data_name", "a/b"], "--data_name 'a/b' is not a name"),
])
def test_names_that_become_folders_are_names_not_paths(argv, message):
    """Issue 20 group 9: a category (and --data_name, which defaults to it) is a name, not a path."""
    with pytest.raises(SirenError, match=re.escape(message)):
        parse_args(["--model", "m", "--data_path", "d", "--output_dir", "o", *argv])


def test_the_old_module_command_is_one_line_not_a_silent_exit_0(tmp_path):
    """Issue 20 named `beta: [1,2]` through `python -m siren.grpo_trl`; that command is gone (grpo_trl.py
    is the script), and run as a module the file exited 0 having read and written nothing."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("beta: [1,2]\n")
    proc = run_in_process("-m", "siren.grpo_trl", "--model", "m", "--data_path", "d", "--config", str(recipe),
                          cwd=tmp_path, check=False)
    assert_refused(proc, "`python -m siren.grpo_trl` is not a command (it was before grpo_trl.py): run "
                         "`python grpo_trl.py` with the same flags", only_line=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def fit_on_an_80_gib_gpu(argv: list[str]):
    """fit_device as it runs on an 80 GiB card (the arithmetic needs none); returns the settings. They are
    parsed on the CPU first: GRPOConfig would set up the CUDA device it is told of."""
    import torch

    from siren.grpo_memory import GIB

    script, config, model = parse_args(argv)
    config.use_cpu = False
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        patch.setattr(torch.cuda, "mem_get_info", lambda *args: (80 * GIB, 80 * GIB))
        fit_device(script, config, model)
    return script, config, model


def test_the_one_gpu_route_at_4b_fits_or_is_refused_before_loading(tiny_model_dir, tmp_path, capsys):
    model = model_of_the_4b_shape(tiny_model_dir, tmp_path / "qwen3-4b-shape", dtype="bfloat16")
    base = ["--model", str(model)]
    # full fine-tuning with a float32 reference model: refused, with what would fit
    with pytest.raises(SirenError) as refused:
        fit_on_an_80_gib_gpu(base)
    message = str(refused.value)
    assert message.startswith("the run does not fit this GPU: ") and "reference model 15.0" in message
    assert "fits with --beta 0 (no reference model): " in message and "--use_peft true (LoRA r 16): " in message
    # without the reference model it fits once generate() takes a few groups at a time, not all 256 sequences
    assert parse_args(base + ["--beta", "0"])[1].generation_batch_size == 256  # TRL's default
    _, config, _ = fit_on_an_80_gib_gpu(base + ["--beta", "0"])
    assert config.generation_batch_size < 256 and config.gradient_accumulation_steps % config.steps_per_generation == 0
    assert config.generation_batch_size % config.num_generations == 0
    assert "memory estimate: " in capsys.readouterr().err
    # LoRA fits with a larger generation batch; a generation batch given by the user is kept, or refused
    assert fit_on_an_80_gib_gpu(base + ["--use_peft", "true"])[1].generation_batch_size > config.generation_batch_size
    with pytest.raises(SirenError, match=r"generation of 256 sequences"):
        fit_on_an_80_gib_gpu(base + ["--beta", "0", "--steps_per_generation", "64"])


def test_the_shipped_recipe_is_the_24_gb_route(tiny_model_dir, tmp_path):
    model = model_of_the_4b_shape(tiny_model_dir, tmp_path / "qwen3-4b-shape", dtype="bfloat16")
    recipe = REPO / "recipes" / "grpo_trl_lora_bf16.yaml"
    script, config, model_args = parse_args(["--config", str(recipe), "--model", str(model)])
    assert (model_args.use_peft, model_args.lora_r, model_args.dtype) == (True, 16, "bfloat16")
    assert set(script.user_given) == {"use_peft", "lora_r", "lora_alpha", "dtype", "model_name_or_path"}
    from siren.grpo_memory import model_shape, trl_estimate

    estimate = trl_estimate(model_shape(model), card_gib=24, dtype="bfloat16", lora_rank=16, beta=config.beta,
                            optim=str(config.optim), micro_batch=4, generation_batch=16, max_prompt_length=2048,
                            max_completion_length=512)
    assert estimate.fits and estimate.reference == 0


def test_without_a_gpu_nothing_is_changed(tiny_model_dir, capsys):
    script, config, model = parse_args(["--model", str(tiny_model_dir)])
    fit_device(script, config, model)
    assert config.generation_batch_size == 256 and "no CUDA device" in capsys.readouterr().err


def test_one_step_at_the_default_lr_moves_the_policy_weights(tiny_model_dir, one_thread):
    """Full fine-tuning at --learning_rate's default: the policy keeps float32 weights, so one AdamW step under
    bf16 autocast (what GRPOConfig(bf16=True) does on a GPU) changes them; on bf16 weights the same
    step rounds away for nearly all of them."""
    import torch

    from siren.grpo_trl import load_policy

    lr = parse_args(["--model_path", str(tiny_model_dir)])[1].learning_rate

    def changed_fraction(model) -> float:
        weight = model.model.layers[0].self_attn.q_proj.weight
        before = weight.detach().clone()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        ids = torch.arange(100, 116).unsqueeze(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return (weight.detach() != before).float().mean().item()

    policy = load_policy(tiny_model_dir)
    assert {param.dtype for param in policy.parameters()} == {torch.float32}
    assert changed_fraction(policy) > 0.99
    assert changed_fraction(load_policy(tiny_model_dir).to(torch.bfloat16)) < 0.05


def test_the_config_pickles_as_every_trl_checkpoint_stores_it():
    """The trainer saves its config with torch.save into each checkpoint: a class defined inside a
    function would fail there, at the first checkpoint of a real run."""
    import pickle

    _, config, _ = parse_args(["--model", "m", "--output_dir", "out"])
    assert pickle.loads(pickle.dumps(config)).output_dir == "out"


def test_flags_that_contradict_the_parquet_folders_manifest_are_refused(short_prompt_dir, tiny_model_dir, tmp_path):
    """Issue 20: each stage reads the manifest beside its input; --max_history names the default
    --data_path, so given with a --data_path built otherwise it contradicts that folder."""
    data = tmp_path / "parquet"
    shutil.copytree(short_prompt_dir, data)
    manifest = json.loads((data / "manifest.json").read_text())
    built_with = manifest["args"]["max_history"]
    base = ["--model_path", str(tiny_model_dir), "--data_dir", str(data), "--output_dir", str(tmp_path / "ckpt")]
    validate(*parse_args(base))  # not given: nothing to contradict
    validate(*parse_args([*base, "--max_history", str(built_with)]))
    with pytest.raises(SirenError, match=rf"--data_path .*parquet was made with max_history {built_with} .* asks for "
                                         rf"{built_with + 1} \(--max_history\)"):
        validate(*parse_args([*base, "--max_history", str(built_with + 1)]))
    (data / "manifest.json").write_text(json.dumps({**manifest, "script": "preprocess_hidden.py"}))
    with pytest.raises(SirenError, match=r"was written by preprocess_hidden\.py, not preprocess_grpo\.py"):
        validate(*parse_args(base))
    assert not (tmp_path / "ckpt").exists()
