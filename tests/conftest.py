"""Shared fixtures: the tiny Qwen3 (built once per test run) and the data the tests run on.

Data: every test that does not check a property of the real Movies files runs on the synthetic
dataset of tests/synthetic_data.py (`synthetic_root`, and `verl_dir` built from it), so a clone
without the real data runs them all. The tests that need the real files ask for `movies_dir`, are
marked `real_data`, and are skipped when the data is not found where the scripts look for it
(siren.data.data_search_roots(): $SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data).
SIREN_TEST_NO_REAL_DATA=1 skips them even where the data is present.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_REAL_DATA_ENV = "SIREN_TEST_NO_REAL_DATA"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite is bound by the CPU of its ~100 short processes on two cores. glibc returns every freed
# block above its mmap threshold (at most 32 MB) to the kernel and faults in fresh zeroed pages for
# the next one: the tiny model's Qwen vocabulary makes 39 MB embedding gradients at every training
# step, so the reduced demo's warm start spent 13 of its 46 CPU-s in the kernel. Serving large
# blocks from the heap and never trimming it keeps freed memory in the process (peak RSS instead of
# current RSS; the processes here are small). Set here, before pytest-xdist starts its workers, so
# they and every process they start read it at start-up. A test-run setting, not the library's.
os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(2**62))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one thread each (and in the scripts they
    # start) avoids oversubscription, which slows torch on CPU several-fold.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run by make test)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped elsewhere")
    config.addinivalue_line("markers", "real_data: needs the real Movies data (the movies_dir fixture); skipped "
                                       "without it")


def pytest_collection_modifyitems(config, items):
    # The reduced demo is the longest test file: collect it first so that `make test` (pytest -n 2
    # --dist loadfile --no-loadscope-reorder) starts it on one worker while the other works
    # through the rest.
    items.sort(key=lambda item: item.path.name != "test_demo.py")
    real_dir, why_not = real_category_dir("Movies")
    for item in items:
        # A test on the real data is marked so however it reaches movies_dir (directly or through
        # another fixture), and `-m "not real_data"` can leave it out. Without the data it is
        # skipped here, before its other fixtures (the tiny model, ...) are built.
        if "movies_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
            if real_dir is None:
                item.add_marker(pytest.mark.skip(reason=why_not))
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# Files of a model folder that no tokenizer reads: left out of the tokenizer cache's key.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npy", ".npz")
_NOT_READ_BY_TOKENIZERS = ("generation_config.json",)
# What AutoTokenizer takes from config.json (to pick the tokenizer class): the rest of the file
# (rope_theta, rms_norm_eps, ...) changes no tokenizer.
_CONFIG_KEYS_READ = ("model_type", "tokenizer_class", "encoder", "decoder")


def _file_key(path: Path) -> tuple:
    import hashlib
    import json

    data = path.read_bytes()
    if path.name == "config.json":
        try:
            config = json.loads(data)
            return (path.name, repr([config.get(key) for key in _CONFIG_KEYS_READ]))
        except (ValueError, AttributeError):
            pass  # not a JSON object: keyed on its bytes
    return (path.name, hashlib.sha256(data).hexdigest())


def _folder_contents_key(folder: Path) -> tuple | None:
    """What the tokenizer files of `folder` hold (every top-level file but the weights and the
    generation config; of config.json what AutoTokenizer reads): equal keys, equal tokenizers."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES)
                       and p.name not in _NOT_READ_BY_TOKENIZERS)
        return tuple(_file_key(p) for p in files)
    except OSError:
        return None


# The Rust tokenizer's settings that transformers sets anew for every encode call (padding,
# truncation, splitting of special tokens): put back to the loaded values at each hand-out.
_TRANSIENT = ("padding", "truncation", "encode_special_tokens")


def _backend_fingerprint(backend) -> tuple:
    """What a caller could change on a Rust tokenizer for good (vocabulary, added tokens, pipeline)."""
    # (get_vocab_size(with_added_tokens=True) takes 0.1 s; the added tokens are compared directly.)
    parts = [backend.get_vocab_size(with_added_tokens=False), repr(sorted(backend.get_added_tokens_decoder().items())),
             type(backend.model).__name__]
    for name in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        component = getattr(backend, name)
        parts.append(None if component is None else component.__getstate__())
    for name in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                 "byte_fallback", "ignore_merges"):
        parts.append(repr(getattr(backend.model, name, None)))
    return tuple(parts)


class _CachedTokenizer:
    """A loaded tokenizer and how to hand out copies of it.

    The Python side is deep-copied for every caller (pad token, padding side, chat template: its
    own). Deep-copying the Rust tokenizer (about 0.8 CPU-s: it re-parses the 7 MB vocabulary) is
    skipped: the copies share it, which is safe because (1) what transformers changes on it per call
    (padding, truncation) it sets anew before every encode, and it is put back to the loaded values
    at each hand-out, and (2) anything lasting (added tokens, vocabulary, normalizer, pre-tokenizer,
    post-processor, decoder) is compared with the loaded tokenizer's at each hand-out: if a caller
    changed it, the shared tokenizer is dropped and a fresh one loaded. (Copies alive at the same time
    share it until then: no siren code adds tokens or changes the pipeline of a tokenizer it loaded.)
    Where the loaded tokenizer is not of that kind, the whole object is deep-copied as before."""

    def __init__(self, load):
        self.load = load
        self.reload()

    def reload(self) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = self.load()
        backend = getattr(self.tokenizer, "_tokenizer", None)
        self.backend = backend if isinstance(backend, Tokenizer) else None
        if self.backend is not None:
            self.transient = {name: getattr(self.backend, name) for name in _TRANSIENT}
            self.fingerprint = _backend_fingerprint(self.backend)

    def _restore_transient(self) -> bool:
        padding, truncation = self.transient["padding"], self.transient["truncation"]
        if padding is not None or truncation is not None:
            return False  # not expected from a tokenizer.json on disk: deep-copy instead
        self.backend.no_padding()
        self.backend.no_truncation()
        self.backend.encode_special_tokens = self.transient["encode_special_tokens"]
        return True

    def copy(self, name_or_path: str):
        """A copy for a load from `name_or_path` (a folder of the same content, maybe elsewhere)."""
        import copy

        if self.backend is not None and _backend_fingerprint(self.backend) != self.fingerprint:
            self.reload()
        if self.backend is None or not self._restore_transient():
            tokenizer = copy.deepcopy(self.tokenizer)
        else:
            tokenizer = copy.deepcopy(self.tokenizer, {id(self.backend): self.backend})
        # The one place a loaded tokenizer keeps the folder it came from.
        tokenizer.name_or_path = name_or_path
        if "name_or_path" in getattr(tokenizer, "init_kwargs", {}):
            tokenizer.init_kwargs["name_or_path"] = name_or_path
        return tokenizer


@pytest.fixture(scope="session", autouse=True)
def _tokenizer_loads_once_per_content():
    """Speed only, no behaviour: the tests load the same 11 MB Qwen3 tokenizer (about 2 CPU-seconds)
    in nearly every in-process stage run, through AutoTokenizer (most stages) or
    PreTrainedTokenizerFast (stage 2's token counter). The load is memoized here on the CONTENT of
    the files it reads (sha256 of each; of config.json, what AutoTokenizer takes from it), wherever
    the folder is, so a test that edits, damages or removes such a file gets a fresh load, a copied
    model folder or an edit of the model's own settings does not, and a load that fails is never
    cached. A cached tokenizer is handed out as a copy (_CachedTokenizer) naming the folder asked
    for, so what a caller changes on it (pad token, padding side, added tokens) reaches no later
    caller. Subprocesses are unaffected. (The vocabulary digest keeps its own
    content-keyed cache: siren.tokenizer_identity.)"""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizers = {}

    def memoized(owner):
        real = owner.__dict__.get("from_pretrained") or owner.from_pretrained

        def load(cls, name, *args, **kwargs):
            return real.__func__(cls, name, *args, **kwargs)

        def from_pretrained(cls, name, *args, **kwargs):
            key = None
            folder = Path(name) if isinstance(name, (str, os.PathLike)) else None
            # Only calls on `owner` itself: transformers' own calls on a tokenizer's subclass (as
            # AutoTokenizer makes) load as they would.
            if (cls is owner and folder is not None and not args and "subfolder" not in kwargs and folder.is_dir()
                    and all(isinstance(v, (str, int, float, bool, type(None))) for v in kwargs.values())):
                contents = _folder_contents_key(folder)
                key = None if contents is None else (owner.__name__, tuple(sorted(kwargs.items())), contents)
            if key is None:
                return load(cls, name, *args, **kwargs)
            if key not in tokenizers:
                tokenizers[key] = _CachedTokenizer(lambda: load(cls, name, *args, **kwargs))
            return tokenizers[key].copy(str(name))

        return classmethod(from_pretrained)

    owners = (AutoTokenizer, PreTrainedTokenizerFast)
    own = {owner: owner.__dict__.get("from_pretrained") for owner in owners}  # None: inherited
    for owner in owners:
        owner.from_pretrained = memoized(owner)
    yield
    for owner, original in own.items():
        if original is None:
            del owner.from_pretrained
        else:
            owner.from_pretrained = original


@contextlib.contextmanager
def torch_on_one_thread():
    """In-process torch work on one thread (no oversubscription of the 2 cores; the same reduction
    order as a one-thread process, so byte-for-byte comparisons hold)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Run a test's in-process torch work on one thread (`torch_on_one_thread`)."""
    with torch_on_one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """ckpt-style directory with the tiny Qwen3: real Qwen3 tokenizer, random 2-layer model."""
    from siren.tools.tiny_model import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct as `make real-model` writes it ($SIREN_REAL_MODEL, else the repo's
    ckpt/smollm2-135m-instruct); `make test` builds it first, so the tests on it run there."""
    from siren.tools.real_model import DEFAULT_DIR, is_complete

    folder = Path(os.environ.get("SIREN_REAL_MODEL") or REPO / DEFAULT_DIR)
    if not is_complete(folder):
        pytest.skip(f"no SmolLM2-135M-Instruct at {folder}: run `make real-model` (make test does)")
    return folder


def real_category_dir(category: str = "Movies") -> tuple[Path | None, str]:
    """The real data of `category`, found as the scripts find it, or None and why not."""
    from siren.data import SPLITS, data_search_roots

    if os.environ.get(NO_REAL_DATA_ENV):
        return None, f"{NO_REAL_DATA_ENV} is set"
    roots = data_search_roots()
    for root in roots:
        candidate = root / category
        if all((candidate / f"{name}.jsonl.gz").is_file() for name in (*SPLITS, "history")):
            return candidate.resolve(), ""
    looked = ", ".join(str(root / category) for root in roots)
    return None, f"real {category} data not found (looked in {looked}); get it with: bash scripts/get_data.sh {category}"


@pytest.fixture(scope="session")
def movies_dir() -> Path:
    """The real Movies files (`<root>/Movies`); the test is skipped when they are not found."""
    path, why_not = real_category_dir("Movies")
    if path is None:
        pytest.skip(why_not)
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding `Movies/` with the synthetic dataset (tests/synthetic_data.py: 40 users,
    ~220 items, the four input files of data/README.md). Pass it as --data_root; the category is
    `Movies` (so prompts say "movie" as on the real data) and its folder `<root>/Movies`."""
    from synthetic_data import write_synthetic_category

    root = tmp_path_factory.mktemp("synthetic-data")
    write_synthetic_category(root / "Movies")
    return root


def free_port() -> int:
    """A free TCP port on localhost, so concurrent multi-process launches do not collide."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Hides CUDA from a script run as a subprocess (env=CPU_ONLY): runs that are compared with each other,
# and the gloo processes of accelerate_launch, then use the CPU on a CUDA machine too.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """`python -m accelerate.commands.launch ...` args for K CPU processes over gloo, on a free port.

    Run them with env=CPU_ONLY: on a machine with CUDA each process would otherwise claim a GPU.
    """
    return ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def load_script(path: str):
    """Import a top-level script (e.g. "preprocess_hidden.py" or "scripts/bench_sketch.py") as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a repo script (path relative to the repo root) with this interpreter, in a new process.

    For what needs one: a launcher, several processes, a signal, a lock held by another process, a
    fresh interpreter. Otherwise `run_in_process` runs the same command without the start-up."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_in_process(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`run_script(*args)` in this process: the script (or `-m module`) runs as `__main__` with sys.argv,
    the working directory and the environment it would have, and its exit status, stdout and stderr
    come back as run_script returns them. The stage scripts end with `sys.exit(run_main(main))`, so
    the status and the one-line error are the command line's."""
    if args[0] == "-m":
        module, argv = args[1], list(args[2:])
        target, start = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True), module
    else:
        path = REPO / args[0]
        argv = list(args[1:])
        target, start = lambda: runpy.run_path(str(path), run_name="__main__"), str(path)
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_path, saved_cwd, saved_env = sys.argv[:], sys.path[:], Path.cwd(), dict(os.environ)
    sys.argv = [start, *argv]
    if args[0] != "-m":
        sys.path.insert(0, str(path.parent))  # as `python path/script.py` puts the script's folder first
    os.environ.update(env or {})
    os.chdir(cwd or REPO)
    returncode = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            # `-m siren.data` runs a module this process imported already: runpy warns, the run is the same
            warnings.filterwarnings("ignore", message=".* found in sys.modules after import of package", category=RuntimeWarning)
            try:
                target()
            except SystemExit as exit_:
                code = exit_.code
                returncode = code if isinstance(code, int) else (0 if code is None else 1)
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
    finally:
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    proc = subprocess.CompletedProcess(list(args), returncode, stdout.getvalue(), stderr.getvalue())
    if check and returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def in_process_device() -> str:
    """The device a stage run in this process reports (`run_in_process`, `load_script(...).main`): `cpu`, or
    `cuda (NAME)` on a machine where torch sees a GPU. `run_script(..., env=CPU_ONLY)` pins a process to the CPU."""
    import torch

    from siren.modeling import device_name

    return device_name("cuda:0" if torch.cuda.is_available() else "cpu")


def assert_refused(run: subprocess.CompletedProcess, expected: str | re.Pattern = "", status: int = 2,
                   only_line: bool = False) -> str:
    """A refused run (run_script / run_in_process with check=False): exit `status`, no traceback, and
    stderr ends with one `error: ...` line holding `expected` (text, or a compiled regular expression
    it finds); with `only_line` that line is all of stderr. Returns the message without `error: `."""
    err = run.stderr
    assert run.returncode == status, f"exit {run.returncode}, not {status}:\n{run.stdout[-2000:]}\n{err[-4000:]}"
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err[-4000:]
    found = expected.search(lines[-1]) if isinstance(expected, re.Pattern) else expected in lines[-1]
    assert found, f"{expected!r} not in: {lines[-1]}"
    if only_line:
        assert err.count("\n") == 1, err
    return lines[-1].removeprefix("error: ")


@pytest.fixture(scope="session")
def verl_dir(synthetic_root, tmp_path_factory) -> Path:
    """A verl parquet directory (train/val/test, no sketch, N=10) built from the synthetic data.

    Built with siren.verl_data directly so stage 4-6 tests do not depend on the stage 2 script.
    """
    import pandas as pd

    from siren.data import load_split
    from siren.verl_data import PARQUET_SPLITS, make_row

    out = tmp_path_factory.mktemp("verl") / "max@10-long@False"
    out.mkdir(parents=True)
    for split, stem in PARQUET_SPLITS.items():
        records = load_split(synthetic_root / "Movies" / f"{split}.jsonl.gz")
        rows = [make_row(r, category="Movies", split=stem, index=i) for i, r in enumerate(records)]
        pd.DataFrame(rows).to_parquet(out / f"{stem}.parquet", index=False)
    return out


@pytest.fixture(scope="session")
def stage5_inputs(verl_dir, tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Stage 5's inputs as stages 4a/4b/4c write them (tests/stage_inputs.py), built once: 12 train rows
    (every second one masked in), 4 valid, 6 test. Read-only: a test that damages one copies it first."""
    from stage_inputs import build_stage5_inputs

    return build_stage5_inputs(verl_dir, tiny_model_dir, tmp_path_factory.mktemp("stage5"), n_train=12, mask_every=2,
                               n_valid=4, n_test=6)


def model_of_the_4b_shape(tiny_model_dir: Path, out: Path, **config: object) -> Path:
    """A model folder with Qwen3-4B's config.json (no weights; `config` added to it) and the tiny
    model's tokenizer: what the memory estimates read, without 8 GB of weights."""
    import json
    import shutil

    from siren.tools.latency import RANDOM_INIT_SHAPES

    shutil.copytree(tiny_model_dir, out)
    for weights in out.glob("*.safetensors"):
        weights.unlink()
    values = json.loads((out / "config.json").read_text())
    values.update(RANDOM_INIT_SHAPES["qwen3-4b"], **config)
    (out / "config.json").write_text(json.dumps(values))
    return out
