"""A tiny MixtralForCausalLM whose expert routing is known by construction, for tests.

Construction: every attention output projection and every expert down projection is zero, so
the residual stream never changes and each layer's router sees RMSNorm(token embedding). Each
token's embedding is `EMBED_NORM * e_d`, a basis vector for its token class `d`; after the
(unit-weight) RMSNorm that is `n * e_d` with `n = EMBED_NORM / sqrt(EMBED_NORM**2 / H + eps)`.
Layer `l`'s router row for expert `(e + l) % E` has `ROUTER_SCALE * (k - r)` in column `d` when
`e` is the class's rank-`r` expert (r < k), zero otherwise. So a token of class `d` gets the
router logits `n * ROUTER_SCALE * (k - r)` on its k experts and 0 on the rest: its top-k (in
order) and its softmax probabilities are closed-form, see `expected_routing`.

Classes (layer 0 experts, highest first; layer l adds l modulo E):
  "a" words (apple, apricot, ...)   -> (0, 1)
  "b" words (banana, blueberry, ...) -> (2, 3)
  "c" words (cherry, coconut)        -> (0, 2)
  template tokens (<|im_start|>, <|im_end|>, role names, pad, [UNK]) -> (1, 3)

The LM head sends every class to "cherry", so a greedy answer is "cherry cherry ...".
The tokenizer is word-level (whitespace split, `tokenizers` library, no downloads) with a ChatML
chat template, so chat messages render to tokens whose classes are known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
ROLES = ["system", "user", "assistant"]
WORDS = {
    "a": ["apple", "apricot", "avocado", "almond"],
    "b": ["banana", "blueberry", "blackberry", "brazil"],
    "c": ["cherry", "coconut"],
}
CLASS_EXPERTS = {"a": (0, 1), "b": (2, 3), "c": (0, 2), "t": (1, 3)}
CLASS_DIRECTION = {"a": 0, "b": 1, "c": 2, "t": 3}
EMBED_NORM = 1.0
ROUTER_SCALE = 0.5

CHAT_TEMPLATE = (
    "{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif -%}"
)


@dataclass(frozen=True)
class TinyMoE:
    path: Path
    vocab: dict[str, int]
    token_class: dict[int, str]  # token id -> class
    hidden: int
    layers: int
    num_experts: int
    top_k: int
    rms_eps: float
    class_experts: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(CLASS_EXPERTS))

    def experts(self, token_id: int, layer: int) -> tuple[int, ...]:
        """The token's top-k experts in `layer`, highest probability first."""
        return tuple((e + layer) % self.num_experts for e in self.class_experts[self.token_class[token_id]][: self.top_k])

    def router_logits(self, token_id: int, layer: int) -> np.ndarray:
        n = EMBED_NORM / math.sqrt(EMBED_NORM**2 / self.hidden + self.rms_eps)
        logits = np.zeros(self.num_experts)
        for r, e in enumerate(self.experts(token_id, layer)):
            logits[e] = n * ROUTER_SCALE * (self.top_k - r)
        return logits

    def expected_routing(self, token_ids: list[int], layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form (top_k_ids tokens x k, softmax probs tokens x E) of a token sequence in `layer`."""
        ids = np.array([self.experts(t, layer) for t in token_ids], dtype=np.int64).reshape(len(token_ids), self.top_k)
        logits = np.array([self.router_logits(t, layer) for t in token_ids]).reshape(len(token_ids), self.num_experts)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return ids, p / p.sum(axis=1, keepdims=True)


def _tokenizer(vocab: dict[str, int]):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]", bos_token=None,
        chat_template=CHAT_TEMPLATE, model_max_length=256, clean_up_tokenization_spaces=False,
    )


def write_tiny_moe(out_dir: str | Path, *, hidden: int = 16, layers: int = 2, num_experts: int = 4, top_k: int = 2,
                   seed: int = 0, intermediate: int = 8) -> TinyMoE:
    """Write the checkpoint (config, safetensors) and tokenizer to `out_dir`; returns what its routing is.
    For vLLM's CPU build use hidden=64 (two heads of 32: its attention takes head sizes 32, 64, ...)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    if num_experts < 4 or top_k not in (1, 2) or hidden < len(CLASS_DIRECTION) or hidden % 2:
        raise ValueError("need E >= 4, k in (1, 2), an even hidden size >= 4")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = SPECIAL + ROLES + [w for ws in WORDS.values() for w in ws]
    vocab = {w: i for i, w in enumerate(names)}
    token_class = {vocab[w]: c for c, ws in WORDS.items() for w in ws}
    token_class.update({vocab[w]: "t" for w in SPECIAL + ROLES})

    eps = 1e-5
    cfg = MixtralConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2, num_local_experts=num_experts,
        num_experts_per_tok=top_k, max_position_embeddings=256, rms_norm_eps=eps, tie_word_embeddings=False,
        sliding_window=None, router_jitter_noise=0.0, output_router_logits=False,
        bos_token_id=None, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = torch.zeros(len(vocab), hidden)
        for tid, c in token_class.items():
            emb[tid, CLASS_DIRECTION[c]] = EMBED_NORM
        model.model.embed_tokens.weight.copy_(emb)
        for li, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.experts.down_proj.zero_()
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
            w = torch.zeros(num_experts, hidden)
            for c, d in CLASS_DIRECTION.items():
                for r, e in enumerate(CLASS_EXPERTS[c][:top_k]):
                    w[(e + li) % num_experts, d] = ROUTER_SCALE * (top_k - r)
            layer.mlp.gate.weight.copy_(w)
        # Every token's next token is "cherry" (greedy): generated text is known, and re-tokenises exactly.
        head = torch.zeros(len(vocab), hidden)
        head[vocab["cherry"], : len(CLASS_DIRECTION)] = 1.0
        model.lm_head.weight.copy_(head)
    model.save_pretrained(out_dir, safe_serialization=True)
    _tokenizer(vocab).save_pretrained(out_dir)
    return TinyMoE(path=out_dir, vocab=vocab, token_class=token_class, hidden=hidden, layers=layers,
                   num_experts=num_experts, top_k=top_k, rms_eps=eps)
