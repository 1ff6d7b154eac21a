"""Offline routing probe: teacher-forced forward passes of a local Mixtral-style checkpoint.

For each token sequence (a response's prompt + answer tokens) the probe runs the model once,
CPU, float32, with `output_router_logits=True`, and returns per MoE layer the top-k expert ids
per token and the softmax router probabilities, or directly the `ResponseRecord`s of
`harness.experts.stats`.

What transformers returns (checked on 5.19, `models/mixtral/modeling_mixtral.py`):
`MixtralModel(..., output_router_logits=True).router_logits` is a tuple with one tensor per
decoder layer, recorded from `MixtralTopKRouter.forward`'s first output, of shape
`(batch * seq_len, num_local_experts)`: the hidden states are flattened row-major, so row
`b * seq_len + t` is sequence `b`, position `t`. The router takes `softmax(logits.float())` and
`torch.topk(probs, num_experts_per_tok)`; the probe repeats exactly those two operations, so its
top-k ids are the experts the forward pass used (no jitter in eval mode).

Padding: sequences of a batch are right-padded and given an attention mask. With a causal mask a
real position never attends to a later (padded) one, so its hidden states, hence its routing,
are those of the unpadded sequence (up to float rounding of a batched matmul); the padded rows of
`router_logits` are cut off before anything is computed from them.

Prompt + answer: `chat_token_ids` renders the prompt with the tokenizer's own chat template and
`add_generation_prompt=True` (as vLLM's chat endpoint does) and appends the answer text's tokens,
without an end-of-sequence token: in serving, the final sampled token (EOS on a normal stop) is
never fed back through the routers, so prompt + answer tokens are exactly the tokens the routers
saw, provided re-tokenising the answer text gives back the generated ids (true for canonical
BPE output; a route that returns `tool_calls` must be turned back into the raw text first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from harness.experts.stats import DEFAULT_CAPACITY_FACTORS, ResponseRecord, response_record

Progress = Callable[[int, int], None]  # (sequences done, sequences total)


@dataclass(frozen=True)
class LayerRouting:
    """One MoE layer's routing of one sequence."""

    top_k_ids: np.ndarray  # (tokens, k) int64, in the router's order (highest probability first)
    probs: np.ndarray  # (tokens, E) float32, softmax of the router logits


@dataclass(frozen=True)
class SequenceRouting:
    tokens: int
    layers: tuple[LayerRouting, ...]

    def record(self, *, num_experts: int, top_k: int, source: str = "",
               capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS) -> ResponseRecord:
        return response_record([(layer.top_k_ids, layer.probs) for layer in self.layers], num_experts=num_experts,
                               top_k=top_k, source=source, capacity_factors=capacity_factors)


def moe_shape(config: Any) -> tuple[int, int]:
    """(E, k) from a Mixtral-style config: `num_local_experts`, `num_experts_per_tok`."""
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    if not experts or not top_k:
        raise ValueError(f"{type(config).__name__} has no num_local_experts / num_experts_per_tok: not a Mixtral-style MoE")
    return int(experts), int(top_k)


def load_moe(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a local checkpoint directory: AutoModelForCausalLM, CPU, float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; the probe only reads local checkpoints")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    model.to("cpu").eval()
    moe_shape(model.config)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def chat_token_ids(tokenizer: Any, messages: list[dict[str, Any]], answer: str, *,
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
    """The prompt rendered by the tokenizer's chat template (generation prompt added), then the answer's tokens."""
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    return list(ids) + list(tokenizer(answer, add_special_tokens=False).input_ids) if answer else list(ids)


def _batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: memory peaks early), less padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            b = batches[-1]
            width = lengths[b[0]]  # the longest of the batch, it came first
            if len(b) < batch_size and (max_batch_tokens is None or width * (len(b) + 1) <= max_batch_tokens):
                b.append(i)
                continue
        batches.append([i])
    return batches


def iter_routing(model: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 8,
                 max_batch_tokens: int | None = 8192, progress: Progress | None = None
                 ) -> Iterator[tuple[int, SequenceRouting]]:
    """(index into `sequences`, its routing), batch by batch in length order (not input order)."""
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    num_experts, top_k = moe_shape(model.config)
    seqs = [list(map(int, s)) for s in sequences]
    lengths = [len(s) for s in seqs]
    limit = getattr(model.config, "max_position_embeddings", None)
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"sequence {i} is empty")
        if limit and n > limit:
            raise ValueError(f"sequence {i} has {n} tokens, more than the model's {limit} positions")
    pad = getattr(model.config, "pad_token_id", None) or 0
    done = 0
    for batch in _batches(lengths, batch_size, max_batch_tokens):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = torch.tensor(seqs[i], dtype=torch.long)
            mask[row, : lengths[i]] = 1
        with torch.inference_mode():
            # The base model: the LM head is not needed for routing.
            out = model.model(input_ids=ids, attention_mask=mask, output_router_logits=True, use_cache=False)
        router_logits = out.router_logits
        if not router_logits:
            raise RuntimeError("the model returned no router logits; is it a Mixtral-style MoE?")
        per_layer = []
        for logits in router_logits:
            if logits.shape != (len(batch) * width, num_experts):
                raise RuntimeError(f"router logits of shape {tuple(logits.shape)}, expected ({len(batch) * width}, {num_experts})")
            probs = torch.softmax(logits.float(), dim=-1)
            top = torch.topk(probs, top_k, dim=-1).indices
            per_layer.append((probs.view(len(batch), width, num_experts).numpy(), top.view(len(batch), width, top_k).numpy()))
        for row, i in enumerate(batch):
            n = lengths[i]
            layers = tuple(LayerRouting(top_k_ids=t[row, :n].astype(np.int64), probs=p[row, :n].copy()) for p, t in per_layer)
            yield i, SequenceRouting(tokens=n, layers=layers)
        done += len(batch)
        if progress:
            progress(done, len(seqs))


def route_sequences(model: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 8,
                    max_batch_tokens: int | None = 8192, progress: Progress | None = None) -> list[SequenceRouting]:
    """Per-sequence, per-layer top-k ids and router probabilities, in input order."""
    out: list[SequenceRouting | None] = [None] * len(sequences)
    for i, routing in iter_routing(model, sequences, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                   progress=progress):
        out[i] = routing
    return out  # type: ignore[return-value]


def probe_records(model: Any, sequences: Sequence[Sequence[int]], *, sources: Sequence[str] | None = None,
                  batch_size: int = 8, max_batch_tokens: int | None = 8192,
                  capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS,
                  progress: Progress | None = None) -> list[ResponseRecord]:
    """One `ResponseRecord` per sequence, in input order; the raw routing is dropped batch by batch."""
    if sources is not None and len(sources) != len(sequences):
        raise ValueError(f"{len(sources)} sources for {len(sequences)} sequences")
    num_experts, top_k = moe_shape(model.config)
    out: list[ResponseRecord | None] = [None] * len(sequences)
    for i, routing in iter_routing(model, sequences, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                   progress=progress):
        out[i] = routing.record(num_experts=num_experts, top_k=top_k, source="" if sources is None else str(sources[i]),
                                capacity_factors=capacity_factors)
    return out  # type: ignore[return-value]
