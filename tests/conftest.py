"""Shared fixtures: the tiny Qwen3 (built once per test run) and the real Movies data."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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


def pytest_collection_modifyitems(config, items):
    # The reduced demo is the longest test file: collect it first so that `make test` (pytest -n 2
    # --dist loadfile --no-loadscope-reorder) starts it on one worker while the other works
    # through the rest.
    items.sort(key=lambda item: item.path.name != "test_demo.py")
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """Run a test's in-process torch work on one thread (no oversubscription of the 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """ckpt-style directory with the tiny Qwen3: real Qwen3 tokenizer, random 2-layer model."""
    from siren.tiny_model import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def movies_dir() -> Path:
    """The real Movies split files (skipped when ../shared/data is not there)."""
    path = SHARED_DATA / "Movies"
    if not (path / "train.jsonl.gz").exists():
        pytest.skip("real Movies data not found at ../shared/data/Movies")
    return path


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="session")
def small_movies_root(movies_dir, tmp_path_factory) -> Path:
    """A data root holding `Movies/` restricted to the first 40 users of the real data.

    Returns the root (pass it as --data_root); the category directory is `<root>/Movies`.
    """
    root = tmp_path_factory.mktemp("data")
    out = root / "Movies"
    out.mkdir()
    history = _read_jsonl_gz(movies_dir / "history.jsonl.gz")[:40]
    users = {row["user_id"] for row in history}
    _write_jsonl_gz(out / "history.jsonl.gz", history)
    for split in ("train", "valid", "test"):
        rows = [r for r in _read_jsonl_gz(movies_dir / f"{split}.jsonl.gz") if r["user_id"] in users]
        _write_jsonl_gz(out / f"{split}.jsonl.gz", rows)
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
    """Run a repo script (path relative to the repo root) with this interpreter."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def verl_dir(small_movies_root, tmp_path_factory) -> Path:
    """A verl parquet directory (train/val/test, no sketch, N=10) built from `small_movies_root`.

    Built with siren.verl_data directly so stage 4-6 tests do not depend on the stage 2 script.
    """
    import pandas as pd

    from siren.data import load_split
    from siren.verl_data import PARQUET_SPLITS, make_row

    out = tmp_path_factory.mktemp("verl") / "max@10-long@False"
    out.mkdir(parents=True)
    for split, stem in PARQUET_SPLITS.items():
        records = load_split(small_movies_root / "Movies" / f"{split}.jsonl.gz")
        rows = [make_row(r, category="Movies", split=stem, index=i) for i, r in enumerate(records)]
        pd.DataFrame(rows).to_parquet(out / f"{stem}.parquet", index=False)
    return out
