"""The arithmetic of stage 6's forward pass, and the matrix-multiply speed it is measured against.

Stage 6 reads a prompt of T real tokens and takes the logits of the last one. Its useful work:

  linear layers   2 * P * T flops, P = the weights of every nn.Linear in the decoder layers
                  (q, k, v, o, gate, up, down: the in x out products; the LM head is applied to
                  one position only, 2 * H * V flops per row)
  attention       per layer, Q K^T and A V over the causal half: 2 * T^2 * (heads * head_dim)

Padding is not useful work: `useful_flops` counts real tokens only, so a badly padded batch shows
up as a lower achieved rate. The ceiling is `torch.matmul` on the same weight shapes, at the same
number of rows per matmul (batch x mean padded length), dtype and thread count: what the linear
layers would reach if nothing else ran (`matmul_rate`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ForwardShape:
    linear_weights: int                 # P: sum of in x out over the decoder layers' nn.Linear
    linear_shapes: dict[tuple[int, int], int]   # (in, out) -> how many such layers
    attention_width: int                # heads * head_dim
    num_layers: int
    hidden_size: int
    vocab_size: int

    def linear_flops(self, tokens: int) -> float:
        """The decoder's linear layers over `tokens` tokens, and the LM head at one position."""
        return 2.0 * self.linear_weights * tokens + 2.0 * self.hidden_size * self.vocab_size

    def attention_flops(self, tokens: int) -> float:
        """Causal attention of one prompt of `tokens` tokens, every layer."""
        return self.num_layers * 2.0 * tokens * tokens * self.attention_width

    def row_flops(self, tokens: int) -> float:
        """Useful flops of one row of `tokens` real tokens (logits of the last position only)."""
        return self.linear_flops(tokens) + self.attention_flops(tokens)


def forward_shape(model) -> ForwardShape:
    """The linear layers and attention width of a causal LM (any Hugging Face decoder)."""
    import torch

    head = model.get_output_embeddings()
    shapes: Counter = Counter()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            shapes[(module.in_features, module.out_features)] += 1
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ForwardShape(
        linear_weights=sum(i * o * n for (i, o), n in shapes.items()), linear_shapes=dict(shapes),
        attention_width=heads * head_dim, num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
    )


def useful_flops(shape: ForwardShape, token_counts: Sequence[int]) -> float:
    return sum(shape.row_flops(t) for t in token_counts)


def matmul_rate(shapes: dict[tuple[int, int], int], rows: int, dtype, seconds: float = 1.0) -> dict:
    """GFLOP/s of `torch.matmul([rows, in], [in, out])` over the model's linear shapes, weighted as
    the forward pass weights them (each shape's share of the flops), after one untimed call each."""
    import torch

    total_flops, total_seconds, per_shape = 0.0, 0.0, {}
    generator = torch.Generator().manual_seed(0)
    for (n_in, n_out), count in sorted(shapes.items()):
        x = torch.randn(rows, n_in, generator=generator).to(dtype)
        w = torch.randn(n_in, n_out, generator=generator).to(dtype)
        torch.matmul(x, w)
        calls, start = 0, time.perf_counter()
        while True:
            torch.matmul(x, w)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / len(shapes) and calls >= 3:
                break
        rate = 2.0 * rows * n_in * n_out * calls / elapsed
        per_shape[f"{n_in}x{n_out}"] = round(rate / 1e9, 2)
        flops = 2.0 * rows * n_in * n_out * count
        total_flops += flops
        total_seconds += flops / rate
    return {"rows": rows, "gflops": round(total_flops / total_seconds / 1e9, 2), "per_shape_gflops": per_shape}


# Where a forward's time goes, from a profiler's self time per operator: `aten::mm`/`aten::addmm` are
# the linear layers (and the one-position LM head), any scaled-dot-product kernel is attention, and the
# rest (norms, rotary embeddings, activations, residual adds, copies) is per-token elementwise work.
# Attention that runs as separate matmuls and a softmax (a model's "eager" attention) has no such
# kernel, and its time counts under the rest; stage 6's engines call SDPA.
LINEAR_OPS = frozenset({"aten::mm", "aten::addmm"})


def op_kind(name: str) -> str:
    """'linear', 'attention' or 'other' for a profiler operator name."""
    if name in LINEAR_OPS:
        return "linear"
    return "attention" if "scaled_dot_product" in name else "other"


def time_breakdown(self_seconds: dict[str, float], seconds: float, linear_flops: float, attention_flops: float,
                   useful: float, ceiling_gflops: float, top: int = 5) -> dict:
    """Split a timed pass of `seconds` by the operators' shares of the profiled self time
    (`self_seconds`: name -> seconds, of a second, profiled pass), with each kind's rate, and the
    efficiency stage 6 would reach if its linear layers ran at the matmul ceiling while attention
    and the rest kept their measured times: the most that faster matrix multiplies could give."""
    total = sum(self_seconds.values())
    if total <= 0 or seconds <= 0 or ceiling_gflops <= 0:
        raise ValueError("time_breakdown needs positive profiled, timed and ceiling figures")
    share = {kind: 0.0 for kind in ("linear", "attention", "other")}
    for name, value in self_seconds.items():
        share[op_kind(name)] += value / total
    spent = {kind: share[kind] * seconds for kind in share}
    others = sorted(((v, n) for n, v in self_seconds.items() if op_kind(n) == "other"), reverse=True)[:top]
    ceiling = ceiling_gflops * 1e9
    bound_seconds = linear_flops / ceiling + spent["attention"] + spent["other"]

    def rate(flops: float, kind: str) -> float | None:
        return round(flops / spent[kind] / 1e9, 2) if spent[kind] > 0 else None

    return {
        "shares": {kind: round(value, 4) for kind, value in share.items()},
        "linear_gflops": rate(linear_flops, "linear"), "attention_gflops": rate(attention_flops, "attention"),
        "top_other_ops": [{"op": n, "share": round(v / total, 4)} for v, n in others],
        "efficiency_if_linear_at_ceiling": round(useful / bound_seconds / ceiling, 3),
    }
