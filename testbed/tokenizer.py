"""Byte-level BPE tokenizer with a ChatML chat template that renders hermes-style tools.

The template is the single source of truth for the prompt format: training renders every
conversation through it, and vLLM applies the same file when serving, so the two cannot drift.
`<tool_call>`/`</tool_call>` are added tokens but NOT special, so they survive decoding with
skip_special_tokens and vLLM's `hermes` tool parser finds them in the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = ["<tool_call>", "</tool_call>", "<tools>", "</tools>", "<tool_response>", "</tool_response>"]

CHAT_TEMPLATE = """\
{%- set sys = none -%}
{%- set msgs = messages -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set sys = messages[0]['content'] -%}
{%- set msgs = messages[1:] -%}
{%- endif -%}
{%- if tools -%}
<|im_start|>system
{% if sys %}{{ sys }}
{% endif %}Tools:
{% for tool in tools %}{%- set fn = tool['function'] if tool['function'] is defined else tool -%}
{%- set props = (fn['parameters'] or {})['properties'] or {} -%}
- {{ fn['name'] }}({{ props | list | join(', ') }}): {{ fn['description'] or '' }}
{% endfor %}Reply with <tool_call>{"name": ..., "arguments": {...}}</tool_call> to call one.<|im_end|>
{% elif sys -%}
<|im_start|>system
{{ sys }}<|im_end|>
{% endif -%}
{%- for m in msgs -%}
{%- if m['role'] == 'assistant' -%}
<|im_start|>assistant
{% if m['content'] %}{{ m['content'] }}{% endif %}
{%- for tc in (m['tool_calls'] or []) -%}
{%- set f = tc['function'] if tc['function'] is defined else tc -%}
<tool_call>
{"name": {{ f['name'] | tojson }}, "arguments": {{ f['arguments'] if f['arguments'] is string else (f['arguments'] | tojson) }}}
</tool_call>
{%- endfor -%}
<|im_end|>
{% elif m['role'] == 'tool' -%}
<|im_start|>user
<tool_response>
{{ m['content'] }}
</tool_response><|im_end|>
{% else -%}
<|im_start|>{{ m['role'] }}
{{ m['content'] }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""


def _empty_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # Words carry their *trailing* space ("Amara ", "Bianchi") and numbers are chunks of up to 3 digits:
    # a value then tokenizes the same in the context ("Account holder: Amara Bianchi") as in the
    # answer ("Amara Bianchi"), so copying it is a plain identity copy for the model's induction
    # heads. GPT-2's leading-space words (" Amara" vs "Amara") made the first piece of every copied
    # value a different token from the one in the prompt.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\p{L}+ ?|\p{N}{1,3}|[^\s\p{L}\p{N}]+ ?|\s+"), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def template_renderer() -> PreTrainedTokenizerFast:
    """A throwaway byte-level tokenizer carrying only the chat template, to render texts before BPE training."""
    tok = _empty_bpe()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return _wrap(tok)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    tok = _empty_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return _wrap(tok)


def letter_pieces(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """Every vocabulary entry made of letters, without its trailing space (`P`, `Bus`, `ness`)."""
    texts = (tokenizer.convert_tokens_to_string([t]).rstrip(" ") for t in tokenizer.get_vocab())
    return sorted({t for t in texts if t.isalpha()})


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """save_pretrained, plus the template inside tokenizer_config.json for loaders that only read that file."""
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
