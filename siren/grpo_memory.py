r"""Memory and disk arithmetic of a stage-3 GRPO run: what the verl launcher chooses offloading from,
and what the TRL backend refuses a run with before it loads anything.

    python -m siren.grpo_memory verl --model ckpt/Qwen3-4B --gpus 1 2 4 8 --gpu_memory_gib 80
    python -m siren.grpo_memory trl --model ckpt/Qwen3-4B --gpu_memory_gib 24 48 80

Every figure is GiB (2^30 bytes) per GPU, from the model's parameter count (its safetensors headers,
or its config.json when it has no weights) and these facts of verl 0.9.1 and TRL 1.16:

verl (FSDP over all W GPUs of all nodes, vLLM on the same GPUs, `model_dtype` fp32):
  - the actor keeps fp32 weights (4 bytes/parameter), fp32 gradients and AdamW's two fp32 moments
    (8 bytes per trainable parameter), each sharded over W;
  - the reference model is forward-only: verl's FSDP engine wraps it in `CPUOffload` whatever
    `ref.fsdp_config.param_offload` says (`_build_fsdp_module`, verl/workers/engine/fsdp/
    transformer_impl.py), so it holds host memory, not GPU memory; a LoRA run has no reference model;
  - the update loads whatever was offloaded back onto the GPU (`EngineTrainModeCtx`) and frees the
    gradients when it ends, and vLLM sleeps meanwhile (`free_cache_engine`): the update needs
    weights + gradients + AdamW + activations whatever the offloading;
  - vLLM then wakes up and takes `gpu_memory_utilization` of the card (its start-up check refuses
    less free memory) while the actor's weights and AdamW state stay on the card unless offloaded.
    This phase is what offloading changes: `param_offload` moves the weights, `optimizer_offload`
    the AdamW state to host memory between updates.
TRL (one process, one device): the policy in `--dtype` (float32 by default), gradients and optimizer
state for the trainable parameters, a reference model of the policy's dtype unless `--beta 0` or
LoRA, the KV cache of one generation batch, and the activations of one micro batch.

Activations are estimated, not measured: the logits of every position in bf16, float32 log-softmax
and its gradient over the response positions, one checkpointed hidden state per layer and one
layer's recomputation. CUDA_OVERHEAD_GIB is assumed, not measured. `scripts/gpu_check.sh --steps
memory` measures both runs' peaks on a GPU.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from siren import SirenError

GIB = 2**30
# CUDA contexts of the trainer and vLLM processes, NCCL buffers and allocator fragmentation per card:
# an assumption, to be replaced by what gpu_check's memory group measures.
CUDA_OVERHEAD_GIB = 4.0
TRL_CUDA_OVERHEAD_GIB = 1.5  # one process, no NCCL, no vLLM
ACTIVATION_BYTES = 2  # bf16 under autocast (both backends on a GPU)
# The offload levels of the launcher's OFFLOAD setting, lightest first, as verl's actor keys.
OFFLOAD_LEVELS = {
    "none": {"param_offload": False, "optimizer_offload": False},
    "optimizer": {"param_offload": False, "optimizer_offload": True},
    "all": {"param_offload": True, "optimizer_offload": True},
}
MOVIES_TRAIN_ROWS = 22_097  # the steps column of the tables
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "F32": 4, "BF16": 2, "F16": 2,
               "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs of a decoder-only model."""

    parameters: int
    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # the checkpoint's dtype (config.json), what `--dtype auto` loads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token, in bf16."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * ACTIVATION_BYTES

    def lora_parameters(self, rank: int) -> int:
        """LoRA parameters on every linear layer of the blocks (q, k, v, o, gate, up, down), as peft's
        and verl's `all-linear` choose them: rank x (in + out) each."""
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        h, inter = self.hidden_size, self.intermediate_size
        per_layer = (h + q_out) + 2 * (h + kv_out) + (q_out + h) + 2 * (h + inter) + (inter + h)
        return rank * per_layer * self.num_layers


def config_parameters(config: dict) -> int:
    """Parameter count of a Qwen2/Qwen3/Llama-style decoder from its config.json (no weights needed)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    inter = config["intermediate_size"]
    attention = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    if config.get("attention_bias") or config.get("model_type") == "qwen2":  # Qwen2 has q/k/v biases
        attention += heads * head_dim + 2 * kv * head_dim
    if config.get("model_type") == "qwen3":  # per-head RMSNorm of q and k
        attention += 2 * head_dim
    block = attention + 3 * h * inter + 2 * h
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    return embeddings + layers * block + h


def safetensors_parameters(model_dir: Path) -> int | None:
    """Exact parameter count from the safetensors headers (8-byte length + JSON); None without weights."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def model_shape(model_dir: str | Path) -> ModelShape:
    from siren.io import read_json

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise SirenError(f"{model_dir} is not a model folder (no config.json)")
    config = read_json(model_dir / "config.json")
    if "text_config" in config:  # multimodal wrappers keep the language model's shape here
        config = config["text_config"]
    try:
        heads = config["num_attention_heads"]
        return ModelShape(
            parameters=safetensors_parameters(model_dir) or config_parameters(config),
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"], intermediate_size=config["intermediate_size"],
            num_heads=heads, num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            dtype=str(config.get("dtype") or config.get("torch_dtype") or "float32"))
    except KeyError as err:
        raise SirenError(f"{model_dir}/config.json has no {err}: not a decoder shape this estimate knows") from None


def shape_of(name: str) -> ModelShape:
    """A named shape of siren.tools.latency.RANDOM_INIT_SHAPES (e.g. qwen3-4b), for tables without weights."""
    from siren.tools.latency import RANDOM_INIT_SHAPES

    config = {**RANDOM_INIT_SHAPES[name], "model_type": name.split("-")[0]}
    return ModelShape(parameters=config_parameters(config), vocab_size=config["vocab_size"],
                      hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
                      intermediate_size=config["intermediate_size"], num_heads=config["num_attention_heads"],
                      num_kv_heads=config["num_key_value_heads"], head_dim=config["head_dim"], dtype="bfloat16")


def activation_bytes(shape: ModelShape, micro_batch: int, sequence: int, response: int) -> int:
    """Forward + backward activations of one micro batch (gradient checkpointing on)."""
    logits = micro_batch * sequence * shape.vocab_size * ACTIVATION_BYTES
    log_softmax = 2 * micro_batch * response * shape.vocab_size * 4  # float32, and its gradient
    checkpoints = shape.num_layers * micro_batch * sequence * shape.hidden_size * ACTIVATION_BYTES
    one_layer = 2 * micro_batch * sequence * (4 * shape.hidden_size + 3 * shape.intermediate_size) * ACTIVATION_BYTES
    return logits + log_softmax + checkpoints + one_layer


def _gib(nbytes: float) -> float:
    return nbytes / GIB


@dataclass(frozen=True)
class VerlEstimate:
    """Per-GPU GiB of a verl GRPO run with one offload level."""

    offload: str
    gpus: int
    card_gib: float
    weights: float
    gradients: float
    adam: float
    activations: float
    vllm: float  # gpu_memory_utilization x card, vLLM's share while it generates
    vllm_weights: float  # the bf16 copy of the model inside vLLM's share (TP 1)
    host_per_node: float  # host memory of one node: offloaded state, the CPU-resident reference, vLLM asleep
    # (verl puts vLLM to sleep at level 2, discarding its weights, except for LoRA: level 1 keeps them on the host)

    @property
    def update(self) -> float:
        return self.weights + self.gradients + self.adam + self.activations + CUDA_OVERHEAD_GIB

    @property
    def rollout(self) -> float:
        kept = OFFLOAD_LEVELS[self.offload]
        return (0 if kept["param_offload"] else self.weights) + (0 if kept["optimizer_offload"] else self.adam) \
            + self.vllm + CUDA_OVERHEAD_GIB

    @property
    def fits(self) -> bool:
        return self.update <= self.card_gib and self.rollout <= self.card_gib and self.vllm_weights < self.vllm

    def describe(self) -> str:
        return (f"offload={self.offload}: update {self.update:.1f} GiB (weights {self.weights:.1f}, gradients "
                f"{self.gradients:.1f}, AdamW {self.adam:.1f}, activations {self.activations:.1f}, CUDA "
                f"{CUDA_OVERHEAD_GIB:.1f}), rollout {self.rollout:.1f} GiB (vLLM {self.vllm:.1f} holding "
                f"{self.vllm_weights:.1f} of weights) per {self.card_gib:.0f} GiB card, {self.gpus} GPU(s); "
                f"host {self.host_per_node:.0f} GiB per node")


def verl_estimate(shape: ModelShape, *, gpus: int, gpus_per_node: int, card_gib: float, gpu_memory_utilization: float,
                  micro_batch: int, max_prompt_length: int, max_response_length: int, lora_rank: int = 0,
                  offload: str = "none") -> VerlEstimate:
    params = shape.parameters
    trainable = shape.lora_parameters(lora_rank) if lora_rank > 0 else params
    kept = OFFLOAD_LEVELS[offload]
    weights, adam = 4 * params / gpus, 8 * trainable / gpus
    host_share = gpus_per_node / gpus  # the fraction of every sharded tensor that lives on one node
    host = (4 * params * host_share if kept["param_offload"] else 0) \
        + (8 * trainable * host_share if kept["optimizer_offload"] else 0) \
        + (0 if lora_rank > 0 else 4 * params * host_share) \
        + (2 * params * gpus_per_node if lora_rank > 0 else 0)  # vLLM's level-1 sleep (LoRA) keeps its weights in host memory
    return VerlEstimate(
        offload=offload, gpus=gpus, card_gib=card_gib, weights=_gib(weights), gradients=_gib(4 * trainable / gpus),
        adam=_gib(adam),
        activations=_gib(activation_bytes(shape, micro_batch, max_prompt_length + max_response_length,
                                          max_response_length)),
        vllm=gpu_memory_utilization * card_gib, vllm_weights=_gib(2 * params), host_per_node=_gib(host))


def choose_offload(shape: ModelShape, requested: str, **settings) -> tuple[VerlEstimate, str]:
    """The estimate for `requested` (none/optimizer/all), or with `auto` the lightest level that fits.

    Returns (estimate, why). Raises SirenError, with the estimate, when the run cannot fit.
    """
    if requested != "auto":
        estimate = verl_estimate(shape, offload=requested, **settings)
        return estimate, f"OFFLOAD={requested} as set"
    estimates = [verl_estimate(shape, offload=level, **settings) for level in OFFLOAD_LEVELS]
    for estimate in estimates:
        if estimate.fits:
            return estimate, "OFFLOAD=auto: the lightest offloading whose estimate fits"
    heaviest = estimates[-1]
    if heaviest.update > heaviest.card_gib:
        advice = "more GPUs (NNODES, NUM_GPUS), LORA_RANK > 0 or a smaller MICRO_BATCH_SIZE"
    else:
        advice = "a smaller GPU_MEMORY_UTILIZATION or more GPUs"
    raise SirenError(f"the run does not fit even with all offloading: {heaviest.describe()}; use {advice}")


@dataclass(frozen=True)
class TrlEstimate:
    """GiB on the one device of a TRL GRPO run."""

    card_gib: float
    weights: float
    gradients: float
    optimizer: float
    reference: float
    generation: float  # KV cache + prefill of one generation batch
    generation_batch: int
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.reference + TRL_CUDA_OVERHEAD_GIB \
            + max(self.generation, self.activations)

    @property
    def fits(self) -> bool:
        return self.total <= self.card_gib

    def describe(self) -> str:
        return (f"{self.total:.1f} GiB of the {self.card_gib:.1f} GiB card (weights {self.weights:.1f}, gradients "
                f"{self.gradients:.1f}, optimizer {self.optimizer:.1f}, reference model {self.reference:.1f}, "
                f"generation of {self.generation_batch} sequences {self.generation:.1f}, micro-batch activations "
                f"{self.activations:.1f}, CUDA {TRL_CUDA_OVERHEAD_GIB:.1f})")


def optimizer_bytes_per_parameter(optim: str) -> int:
    """AdamW keeps two moments: float32 (8 bytes), or 8-bit with bitsandbytes (2 bytes); SGD none."""
    optim = optim.lower()
    if "8bit" in optim:
        return 2
    if optim.startswith("sgd"):
        return 0
    return 8


def trl_estimate(shape: ModelShape, *, card_gib: float, dtype: str, lora_rank: int, beta: float, optim: str,
                 micro_batch: int, generation_batch: int, max_prompt_length: int,
                 max_completion_length: int) -> TrlEstimate:
    weight_bytes = DTYPE_BYTES.get(shape.dtype if dtype == "auto" else dtype, 4)
    trainable = shape.lora_parameters(lora_rank) if lora_rank > 0 else shape.parameters
    sequence = max_prompt_length + max_completion_length
    # generate() keeps K/V for every sequence of the batch; its prefill runs the MLP over every prompt token
    prefill = generation_batch * max_prompt_length * (2 * shape.intermediate_size + 4 * shape.hidden_size) \
        * ACTIVATION_BYTES
    return TrlEstimate(
        card_gib=card_gib, weights=_gib(weight_bytes * shape.parameters), gradients=_gib(4 * trainable),
        optimizer=_gib(optimizer_bytes_per_parameter(optim) * trainable),
        reference=_gib(weight_bytes * shape.parameters) if beta != 0 and lora_rank == 0 else 0.0,
        generation=_gib(generation_batch * sequence * shape.kv_bytes_per_token + prefill),
        generation_batch=generation_batch,
        activations=_gib(activation_bytes(shape, micro_batch, sequence, max_completion_length)))


def checkpoint_gib(shape: ModelShape, lora_rank: int = 0) -> float:
    """One verl checkpoint: the fp32 model shards, AdamW's two moments of the trainable parameters (verl's
    save_contents model, optimizer, extra; the extra state is a few MB)."""
    trainable = shape.lora_parameters(lora_rank) if lora_rank > 0 else shape.parameters
    return _gib(4 * shape.parameters + 8 * trainable)


def run_disk_gib(shape: ModelShape, keep: int = 1, lora_rank: int = 0) -> float:
    """Peak disk of a verl run: `keep` checkpoints plus the one being written (verl removes the oldest only
    after a save), and the merged bf16 model."""
    return (keep + 1) * checkpoint_gib(shape, lora_rank) + _gib(2 * shape.parameters)


def verl_table(shape: ModelShape, gpu_counts, card_gib: float, train_rows: int, epochs: int = 2, batch_size: int = 32,
               **settings) -> str:
    """Markdown rows: GPUs, the offload auto chooses, per-card peaks, host memory per node, steps, disk."""
    lines = ["| GPUs | offload (auto) | update GiB/card | rollout GiB/card | host GiB/node | steps | disk GiB |",
             "|---|---|---|---|---|---|---|"]
    for gpus in gpu_counts:
        nodes_gpus = dict(gpus=gpus, gpus_per_node=min(gpus, 8), card_gib=card_gib)
        try:
            estimate, _ = choose_offload(shape, "auto", **nodes_gpus, **settings)
            offload = estimate.offload
        except SirenError:
            estimate, offload = verl_estimate(shape, offload="all", **nodes_gpus, **settings), "does not fit"
        steps = train_rows // (batch_size * gpus) * epochs  # verl's sampler drops the last partial batch
        lines.append(f"| {gpus} | {offload} | {estimate.update:.1f} | {estimate.rollout:.1f} | "
                     f"{estimate.host_per_node:.0f} | {steps} | {run_disk_gib(shape):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from siren import cli

    parser = cli.stage_parser(__doc__)
    parser.add_argument("backend", choices=("verl", "trl"))
    parser.add_argument("--model", default=None, help="model folder; unset: the Qwen3-4B shape (no weights needed)")
    parser.add_argument("--gpus", type=cli.positive_int, nargs="+", default=[1, 2, 4, 8], help="verl: GPU counts")
    parser.add_argument("--gpu_memory_gib", type=float, nargs="+", default=[80.0], help="card sizes")
    args = parser.parse_args(argv)
    shape = model_shape(args.model) if args.model else shape_of("qwen3-4b")
    print(f"{args.model or 'the Qwen3-4B shape'}: {shape.parameters / 1e9:.2f}B parameters")
    for card in args.gpu_memory_gib:
        if args.backend == "verl":
            print(verl_table(shape, args.gpus, card, train_rows=MOVIES_TRAIN_ROWS, gpu_memory_utilization=0.6,
                             micro_batch=4, max_prompt_length=2048, max_response_length=512))
            continue
        for label, dtype, lora, beta in (("full, beta 0.001", "float32", 0, 0.001), ("full, beta 0", "float32", 0, 0.0),
                                         ("LoRA r 16", "float32", 16, 0.001), ("LoRA r 16, bf16", "bfloat16", 16, 0.001)):
            estimate = trl_estimate(shape, card_gib=card, dtype=dtype, lora_rank=lora, beta=beta, optim="adamw_torch",
                                    micro_batch=4, generation_batch=8, max_prompt_length=2048,
                                    max_completion_length=512)
            print(f"{card:.0f} GiB, {label}: {'fits' if estimate.fits else 'does not fit'}, {estimate.describe()}")


if __name__ == "__main__":
    from siren.cli import run_main

    sys.exit(run_main(main))
