"""Answer-only (AO) engines: the one forward pass that gives the next-token distribution after
`<answer>`, scored over the rating tokens.

    eager     one Hugging Face forward per batch. On a CPU the prompts are packed end to end into
              one row, with no padding (`siren.packed_attention`). On a GPU, or for a model whose
              attention does not go through transformers' AttentionInterface, the batch is
              left-padded to its longest row.
    compiled  the same forward through `torch.compile(dynamic=False)`: each batch is left-padded to
              a fixed length bucket and a fixed batch size, so every (batch, bucket) shape is
              captured once (CUDA graphs on a GPU) and replayed. Rows longer than the largest
              bucket go through the eager forward. `prepare()` is given the prompts of the run:
              it compiles the shapes they need before any timing starts (that time is reported as
              warm-up) and counts the rows that will run eagerly (`fallback_rows`, each row once,
              however often it is scored). A run where most rows would fall back is refused
              (`check_bucket_fallback`): its latency would be the eager engine's under the
              compiled engine's name.
    vllm      one generated token restricted to the rating tokens (`allowed_token_ids`), with
              their log-probabilities (GPU; the engine is built by `make_vllm_engine`, which stage
              4a's vLLM backend shares).

Every engine returns the same thing for a list of prompts: `AOScores.rating_probs`, the next-token
distribution renormalised over the tokens "1".."5" (float32, [B, 5]), from which the constrained
rating (argmax) and the expected rating (sum_r p(r) r) follow exactly as `siren.modeling` defines
them, and, where the whole vocabulary is available (eager, compiled), `greedy_ids`, the argmax
over the whole vocabulary that `--decode greedy` parses.

Position ids count real tokens only (the first real token of every row is position 0), so a row's
logits do not depend on how much padding its batch or bucket adds, up to float rounding.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from siren import SirenError

if TYPE_CHECKING:
    import torch

ENGINES = ("eager", "compiled", "vllm")
# Length buckets of the compiled engine, in tokens. Movies' answer-only prompts are 130-1,100
# tokens (p95 about 700), so most rows land in the 512 and 768 buckets.
DEFAULT_BUCKETS = (256, 512, 768, 1024, 1536, 2048)


@dataclass
class AOScores:
    rating_probs: torch.Tensor              # [B, 5] float32 on the CPU, ratings 1..5
    greedy_ids: torch.Tensor | None = None  # [B] argmax over the whole vocabulary (None for vllm)


def left_padded(tokenizer, prompts: Sequence[str], width: int | None = None, rows: int | None = None):
    """input_ids, attention_mask, position_ids of `prompts`, left-padded to `width` tokens (default:
    the longest prompt) and to `rows` rows (extra rows repeat the last prompt; callers drop them)."""
    import torch

    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    width = width or max(len(row) for row in ids)
    rows = rows or len(ids)
    if any(len(row) > width for row in ids) or rows < len(ids):
        raise ValueError(f"{len(ids)} prompts of up to {max(len(r) for r in ids)} tokens do not fit [{rows}, {width}]")
    ids = ids + [ids[-1]] * (rows - len(ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((rows, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def count_fallback_rows(lengths: Sequence[int], buckets: Sequence[int]) -> int:
    """How many prompts of these token `lengths` are longer than the largest bucket (run eagerly)."""
    largest = max(buckets)
    return sum(length > largest for length in lengths)


def check_bucket_fallback(lengths: Sequence[int], buckets: Sequence[int]) -> str | None:
    """Refuse (one line) buckets that most of the prompts (token `lengths`) do not fit: those rows
    would run eagerly and the latency measured would be the eager engine's, reported as the
    compiled one's. Returns a one-line note when some rows (at most half) fall back, else None."""
    fallback = count_fallback_rows(lengths, buckets)
    if not fallback:
        return None
    largest, longest = max(buckets), max(lengths)
    if 2 * fallback > len(lengths):
        raise SirenError(f"{fallback} of {len(lengths)} rows are longer than the largest --buckets value ({largest} "
                         f"tokens; the longest has {longest}) and would run eagerly, not compiled: add a bucket of "
                         f"at least {longest}, or use --engine eager")
    return (f"note: {fallback} of {len(lengths)} rows are longer than the largest bucket ({largest} tokens) and run "
            f"eagerly; the compiled latency includes them (engine.fallback_rows)")


class EagerAO:
    """One Hugging Face forward per batch: packed into one row (`packed`, the default on a CPU where
    the model supports it) or left-padded to the batch's longest row."""

    name = "eager"

    def __init__(self, model, tokenizer, rating_token_ids: dict[int, int], *, packed: bool | None = None) -> None:
        from siren.packed_attention import supports_packing

        self.model = model
        self.tokenizer = tokenizer
        self.rating_token_ids = dict(rating_token_ids)
        self.warmup_seconds = 0.0
        self.fallback_rows = 0
        can_pack = supports_packing(model)
        # Default: packed on a CPU, where the pad tokens cost their full arithmetic. On a GPU the
        # padded batch stays: one attention kernel per layer instead of one per prompt and layer.
        self.packed = (can_pack and model.device.type == "cpu") if packed is None else bool(packed)
        if self.packed and not can_pack:
            raise SirenError(f"{type(model).__name__} does not dispatch its attention through transformers' "
                             "AttentionInterface, so its prompts cannot be packed")

    def _forward(self, input_ids, attention_mask, position_ids):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False, logits_to_keep=1)
        return output.logits[:, -1, :]

    def _scores(self, logits) -> AOScores:
        from siren.modeling import rating_probabilities

        logits = logits.float()
        return AOScores(rating_probabilities(logits, self.rating_token_ids).cpu(), logits.argmax(-1).cpu())

    def _run(self, forward, prompts: Sequence[str], width: int | None = None, rows: int | None = None):
        """`forward` on `prompts` left-padded to [rows, width]. The inputs are made and the forward
        run in inference mode whatever the caller's mode: a compiled graph is guarded on the grad
        mode and on its inputs' dispatch keys, and anything else would recompile every shape
        inside the timed loop."""
        import torch

        device = self.model.device
        with torch.inference_mode():
            tensors = left_padded(self.tokenizer, prompts, width, rows)
            return forward(*(t.to(device) for t in tensors))

    def prepare(self, prompts: Sequence[str]) -> float:
        """Nothing to compile; returns the warm-up seconds (0)."""
        return 0.0

    def score(self, prompts: Sequence[str]) -> AOScores:
        if not self.packed:
            return self._scores(self._run(self._forward, prompts))
        import torch

        from siren.packed_attention import last_token_logits

        with torch.inference_mode():
            token_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
            return self._scores(last_token_logits(self.model, token_ids))

    def report(self) -> dict:
        return {"engine": self.name, "warmup_seconds": round(self.warmup_seconds, 3), "fallback_rows": self.fallback_rows,
                "layout": "packed" if self.packed else "left-padded"}


class CompiledAO(EagerAO):
    """The eager forward through `torch.compile` with static shapes (see the module docstring)."""

    name = "compiled"

    def __init__(self, model, tokenizer, rating_token_ids: dict[int, int], *, batch_size: int,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, backend: str = "inductor", mode: str | None = None) -> None:
        import torch

        super().__init__(model, tokenizer, rating_token_ids, packed=False)
        if batch_size < 1 or not buckets or min(buckets) < 1:
            raise SirenError(f"the compiled engine needs a batch size >= 1 and positive buckets, got {batch_size}, {buckets}")
        self.batch_size = int(batch_size)
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        if mode is None and model.device.type == "cuda":
            mode = "reduce-overhead"  # CUDA graphs: the replay launches no kernels from Python
        self.mode = mode
        self.backend = backend
        # One graph per (batch, bucket) shape: let dynamo keep them all instead of falling back.
        dynamo_config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), len(self.buckets) + 2))
        self._compiled = torch.compile(self._forward, dynamic=False, backend=backend, mode=mode)
        self.shapes: set[tuple[int, int]] = set()

    def bucket_of(self, length: int) -> int | None:
        """The smallest bucket that holds `length` tokens; None past the largest (eager fallback)."""
        position = bisect_left(self.buckets, length)
        return self.buckets[position] if position < len(self.buckets) else None

    def _lengths(self, prompts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]

    def _call(self, prompts: Sequence[str], bucket: int):
        import torch

        shape = (self.batch_size, bucket)
        start = time.perf_counter()
        if hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        # clone: a CUDA-graph replay reuses its output buffer on the next call
        logits = self._run(self._compiled, prompts, bucket, self.batch_size).clone()
        if shape not in self.shapes:
            if self.model.device.type == "cuda":
                torch.cuda.synchronize(self.model.device)
            self.warmup_seconds += time.perf_counter() - start
            self.shapes.add(shape)
        return logits[: len(prompts)]

    def prepare(self, prompts: Sequence[str]) -> float:
        """Compile every (batch, bucket) shape that `prompts` (the run's rows) will need, before any
        timing, and count the rows among them that will run eagerly (`fallback_rows`)."""
        before = self.warmup_seconds
        lengths = self._lengths(prompts)
        self.fallback_rows = count_fallback_rows(lengths, self.buckets)
        needed = sorted({b for b in map(self.bucket_of, lengths) if b is not None})
        for bucket in needed:
            if (self.batch_size, bucket) not in self.shapes:
                # A one-token prompt fits every bucket; its result is thrown away.
                self._call([self.tokenizer.decode([self.rating_token_ids[1]])], bucket)
                if self.mode == "reduce-overhead":  # cudagraph trees record on the second call
                    self._call([self.tokenizer.decode([self.rating_token_ids[1]])], bucket)
        return self.warmup_seconds - before

    def score(self, prompts: Sequence[str]) -> AOScores:
        import torch

        lengths = self._lengths(prompts)
        logits: list = [None] * len(prompts)
        by_bucket: dict[int | None, list[int]] = {}
        for position, length in enumerate(lengths):
            by_bucket.setdefault(self.bucket_of(length), []).append(position)
        for bucket, positions in by_bucket.items():
            for start in range(0, len(positions), self.batch_size):
                chunk = positions[start:start + self.batch_size]
                texts = [prompts[p] for p in chunk]
                if bucket is None:
                    out = self._run(self._forward, texts)
                else:
                    out = self._call(texts, bucket)
                for p, row in zip(chunk, out, strict=True):
                    logits[p] = row
        return self._scores(torch.stack(logits))

    def report(self) -> dict:
        return {**super().report(), "buckets": list(self.buckets), "batch_size": self.batch_size,
                "compiled_shapes": sorted(self.shapes), "backend": self.backend, "mode": self.mode}


def make_vllm_engine(model_path: str | os.PathLike, dtype: str = "auto", num_processes: int = 1, seed: int = 0, **kwargs):
    """A vLLM offline engine, as stage 4a (CoT) and the vllm AO engine use it.

    Under several processes each one runs its own engine on its own GPU, joined to the launcher's
    process group as TRL's colocate mode does. `logprobs_mode="processed_logprobs"` makes the
    returned log-probabilities those after `allowed_token_ids` is applied, i.e. renormalised over
    the allowed tokens; the default (raw) would be over the whole vocabulary.
    """
    from siren.modeling import check_weight_files

    try:
        from vllm import LLM
    except ImportError:
        raise SirenError("the vllm engine needs the vllm package (pip install -r requirements.txt)") from None
    check_weight_files(model_path)
    engine_args = {"distributed_executor_backend": "external_launcher"} if num_processes > 1 else {}
    return LLM(model=str(model_path), dtype=dtype, tensor_parallel_size=1, seed=seed,
               logprobs_mode="processed_logprobs", **engine_args, **kwargs)


class VLLMAO:
    """AO as one generated token restricted to the rating tokens, with their log-probabilities."""

    name = "vllm"

    def __init__(self, llm, tokenizer, rating_token_ids: dict[int, int]) -> None:
        from vllm import SamplingParams

        self.llm = llm
        self.tokenizer = tokenizer
        self.rating_token_ids = dict(rating_token_ids)
        self.ids = [self.rating_token_ids[r] for r in sorted(self.rating_token_ids)]
        self.params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=self.ids, logprobs=len(self.ids))
        self.warmup_seconds = 0.0
        self.fallback_rows = 0

    def prepare(self, prompts: Sequence[str]) -> float:
        return 0.0  # vLLM captures its CUDA graphs when the engine is built

    def score(self, prompts: Sequence[str]) -> AOScores:
        token_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], self.params, use_tqdm=False)
        return AOScores(rating_probs_from_logprobs([out.outputs[0].logprobs[0] for out in outputs], self.ids))

    def report(self) -> dict:
        return {"engine": self.name, "warmup_seconds": 0.0, "fallback_rows": 0}


def rating_probs_from_logprobs(steps: Sequence[dict], rating_ids: Sequence[int]):
    """[B, 5] probabilities from vLLM's first-step logprob dicts ({token_id: Logprob}), renormalised
    over the rating tokens (softmax is shift-invariant, so this equals the softmax of their logits)."""
    import torch

    rows = []
    for position, step in enumerate(steps):
        missing = [t for t in rating_ids if t not in step]
        if missing:
            raise SirenError(f"vLLM returned no log-probability for rating token(s) {missing} of row {position}; "
                             "the engine must be built with logprobs_mode='processed_logprobs' (make_vllm_engine)")
        rows.append([float(getattr(step[t], "logprob", step[t])) for t in rating_ids])
    return torch.softmax(torch.tensor(rows, dtype=torch.float32), dim=-1)


def build_ao_engine(name: str, model, tokenizer, rating_token_ids: dict[int, int], *, batch_size: int = 16,
                    buckets: Sequence[int] = DEFAULT_BUCKETS, compile_backend: str = "inductor", llm=None):
    """The AO engine `name` (ENGINES) over a loaded model (eager, compiled) or vLLM engine (vllm)."""
    if name == "eager":
        return EagerAO(model, tokenizer, rating_token_ids)
    if name == "compiled":
        return CompiledAO(model, tokenizer, rating_token_ids, batch_size=batch_size, buckets=buckets,
                          backend=compile_backend)
    if name == "vllm":
        if llm is None:
            raise SirenError("internal error: the vllm AO engine needs a vLLM engine (make_vllm_engine)")
        return VLLMAO(llm, tokenizer, rating_token_ids)
    raise SirenError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
