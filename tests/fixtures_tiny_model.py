"""A tiny random-weight Mixtral checkpoint built at test time, so vLLM tests need no model hub.

Hidden size 64 (vLLM's CPU MoE kernel wants a multiple of 32), head size 32, 2 layers, 4 experts, top-2, and a
byte-level BPE tokenizer trained on a few sentences with a plain chat template. Its answers are
noise; the tests only need a real vLLM server to start, count tokens and emit metrics and spans.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SENTENCES = [
    "Where is my order? It shipped on Monday and should arrive on Friday.",
    "The invoice total is 42 dollars; the refund takes five business days.",
    "SELECT count(*) FROM orders WHERE status = 'late';",
    "Clause 7.2 says the contract ends after thirty days of written notice.",
    "¿Dónde está mi pedido? Où est ma commande ? The answer is in the context.",
    "Hello, how can I help you today? Thank you for your patience.",
]


def build_tiny_mixtral(out_dir: Path, seed: int = 0) -> Path:
    """Write config, weights and tokenizer of a tiny Mixtral to `out_dir`; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_SENTENCES * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the smallest vLLM's CPU attention supports
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = MixtralForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
