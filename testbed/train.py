"""CPU training of the two testbed models on conversations rendered by the served chat template."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from testbed.data import request_messages, target_text

IGNORE = -100


@dataclass
class Shape:
    """Model size; hidden a multiple of 32 (vLLM's CPU MoE kernel), head_dim in vLLM's CPU attention list."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    dense_intermediate: int = 512
    experts: int = 8
    top_k: int = 2
    max_positions: int = 1024
    tie_embeddings: bool = True  # copying rare tokens (ids, amounts) is far easier when output = input embedding


def dense_model(shape: Shape, vocab: int, tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=shape.hidden, intermediate_size=shape.dense_intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads, head_dim=shape.hidden // shape.heads,
        max_position_embeddings=shape.max_positions, tie_word_embeddings=shape.tie_embeddings,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


def moe_model(shape: Shape, vocab: int, tok: PreTrainedTokenizerFast) -> MixtralForCausalLM:
    # Expert intermediate = dense / top_k, so active MLP parameters per token match the dense model.
    cfg = MixtralConfig(
        vocab_size=vocab, hidden_size=shape.hidden, intermediate_size=shape.dense_intermediate // shape.top_k,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads, head_dim=shape.hidden // shape.heads,
        num_local_experts=shape.experts, num_experts_per_tok=shape.top_k, router_aux_loss_coef=0.02,
        output_router_logits=True, max_position_embeddings=shape.max_positions, tie_word_embeddings=shape.tie_embeddings,
        sliding_window=None, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return MixtralForCausalLM(cfg)


def encode(tok: PreTrainedTokenizerFast, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Prompt exactly as vLLM renders it (template + add_generation_prompt) then the target; loss on the target only.

    A training row's `followups` become later turns (user question, assistant answer) with loss on
    each answer; the first turn is still exactly the request the runner sends.
    """
    messages = request_messages(row)
    turns = [(None, target_text(row["expected"]))] + [(f["question"], f["answer"]) for f in row.get("followups", [])]
    ids: list[int] = []
    labels: list[int] = []
    for question, answer in turns:
        if question is not None:
            messages += [{"role": "assistant", "content": previous}, {"role": "user", "content": question}]
        prompt = tok.apply_chat_template(messages, tools=row.get("tools"), add_generation_prompt=True, tokenize=False)
        p = tok(prompt, add_special_tokens=False).input_ids
        assert p[: len(ids)] == ids, "the chat template must render earlier turns unchanged"
        t = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        labels += [IGNORE] * (len(p) - len(ids)) + t
        ids = p + t
        previous = answer
    return ids, labels


def _batches(examples: list[tuple[list[int], list[int]]], batch_size: int, rng: random.Random, pad: int):
    """Endless stream of padded batches of similar length (less padding, faster steps)."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunks = [order[i : i + batch_size * 16] for i in range(0, len(order), batch_size * 16)]
        batches = []
        for chunk in chunks:
            chunk.sort(key=lambda i: len(examples[i][0]))
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            width = max(len(examples[i][0]) for i in b)
            ids = torch.full((len(b), width), pad, dtype=torch.long)
            labels = torch.full((len(b), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(b), width), dtype=torch.long)
            for row, i in enumerate(b):
                x, y = examples[i]
                ids[row, : len(x)] = torch.tensor(x)
                labels[row, : len(y)] = torch.tensor(y)
                mask[row, : len(x)] = 1
            yield ids, labels, mask


def phased_batches(examples: list[tuple[list[int], list[int]]], drills: list[tuple[list[int], list[int]]], drill_steps: int,
                   batch_size: int, seed: int, pad: int):
    """`drill_steps` batches of drills only, then batches of all examples, endlessly (one RNG per stream)."""
    if drill_steps:
        if not drills:
            raise ValueError("a drill phase needs drill examples")
        drill_stream = _batches(drills, batch_size, random.Random(seed + 1), pad)
        for _ in range(drill_steps):
            yield next(drill_stream)
    yield from _batches(examples, batch_size, random.Random(seed), pad)


def target_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the assistant tokens only, plus Mixtral's router load-balancing loss.

    Same value as `model(..., labels=labels).loss`, but the LM head runs only where there is a
    target (about 10 % of positions), which makes a step about 10 % cheaper on the CPU.
    """
    moe = hasattr(model.config, "num_local_experts")
    out = model.model(input_ids=ids, attention_mask=mask, **({"output_router_logits": True} if moe else {}))
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = model.lm_head(out.last_hidden_state[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep])
    if moe:
        aux = load_balancing_loss_func(out.router_logits, model.config.num_local_experts, model.config.num_experts_per_tok, mask)
        loss = loss + model.config.router_aux_loss_coef * aux
    return loss


def train(model: torch.nn.Module, examples: list[tuple[list[int], list[int]]], *, steps: int, batch_size: int, lr: float,
          seed: int, pad_id: int, log: Callable[[str], None] = print, max_seconds: float | None = None,
          probe: Callable[[int], None] | None = None, probe_every: int = 0,
          drills: list[tuple[list[int], list[int]]] | None = None, drill_steps: int = 0) -> dict[str, float]:
    """AdamW with warm-up and cosine decay; `probe(step)` runs every `probe_every` steps (e.g. a held-out check).

    The first `drill_steps` steps draw their batches from `drills` only (copy and look-up drills):
    without that phase the moment a model starts to copy came at a different step in every build,
    sometimes after the last one; with it both models copied by about step 2,000 in most builds
    (testbed/EXPERIMENTS.md, sessions 7-8).
    """
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    )
    model.train()
    start = time.time()
    stream = phased_batches(examples, drills or [], drill_steps, batch_size, seed, pad_id)
    running = None
    for step in range(1, steps + 1):
        ids, labels, mask = next(stream)
        loss = target_loss(model, ids, labels, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if max_seconds and time.time() - start > max_seconds:
            log(f"time budget of {max_seconds:.0f}s reached at step {step}/{steps}; stopping early")
            break
        if step % 50 == 0 or step == steps:
            log(f"step {step}/{steps} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e} elapsed {time.time() - start:.0f}s")
        if probe and probe_every and step % probe_every == 0 and step < steps:
            model.eval()
            probe(step)
            model.train()
    model.eval()
    return {"final_loss": float(running or 0.0), "seconds": time.time() - start, "steps_done": step}


def save_model(model: torch.nn.Module, tok: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    from testbed.tokenizer import save_tokenizer

    out_dir = Path(out_dir)
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tok, out_dir)
