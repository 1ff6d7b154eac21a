"""CI smoke test of the testbed build: a few training steps, then the saved artefacts must load and work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testbed.build import main

    out = tmp_path_factory.mktemp("testbed")
    main(["--smoke", "--out", str(out)])  # in-process: the same code path as `python -m testbed.build --smoke`
    assert (out / "dense" / "model.safetensors").exists() and (out / "moe" / "model.safetensors").exists()
    return out


def test_tokenizer_renders_tools_like_hermes(built: Path) -> None:
    from transformers import AutoTokenizer

    from testbed.data import TOOLS

    tok = AutoTokenizer.from_pretrained(built / "dense")
    text = tok.apply_chat_template([{"role": "user", "content": "Where is my order A-48213?"}], tools=TOOLS,
                                   add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    # Tools render one compact line each (name, parameter names, description): short prompts train faster.
    assert ("Tools:\n- track_order(order_id): Look up where a customer's order is.\n"
            "- run_sql(query): Run a read-only SQL query on the analytics database.\n") in text
    assert text.endswith("<|im_start|>user\nWhere is my order A-48213?<|im_end|>\n<|im_start|>assistant\n")
    # The hermes tags are single tokens that survive skip_special_tokens (vLLM's parser reads decoded text).
    ids = tok("<tool_call>\n{}\n</tool_call>", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids[0]) == "<tool_call>"
    assert "<tool_call>" in tok.decode(ids, skip_special_tokens=True)
    assert tok.eos_token == "<|im_end|>"
    # The template is in tokenizer_config.json too, identical to the one transformers loads.
    cfg = json.loads((built / "dense" / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == tok.chat_template


def test_context_rows_render_as_the_runner_sends_them(built: Path) -> None:
    from transformers import AutoTokenizer

    from testbed.data import generate, request_messages

    tok = AutoTokenizer.from_pretrained(built / "moe")
    row = generate("heldout", {"billing": 1}, seed=7)[0]
    text = tok.apply_chat_template(request_messages(row), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nAnswer using only the context below.\n\nContext:\n" + row["context"])
    assert "Tools:" not in text


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_model_loads_and_generates(built: Path, kind: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / kind)
    model = AutoModelForCausalLM.from_pretrained(built / kind)
    cfg = model.config
    assert cfg.hidden_size % 32 == 0
    assert cfg.tie_word_embeddings  # output layer = input embedding: what lets tiny models copy rare tokens
    if kind == "moe":
        assert (cfg.num_local_experts, cfg.num_experts_per_tok) == (8, 2)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    summary = json.loads((built / "build_summary.json").read_text())
    assert summary[kind]["params"] == sum(p.numel() for p in model.parameters())


def test_param_counts_from_checkpoint(built: Path) -> None:
    from testbed.params import count

    dense, moe = count(built / "dense"), count(built / "moe")
    assert dense.total_params == dense.active_params
    assert moe.total_params > moe.active_params
    # Expert width is dense width / top-k, so per-token compute matches up to the router.
    assert abs(moe.active_params - dense.active_params) / dense.active_params < 0.02


def test_values_tokenize_the_same_in_context_and_answer(built: Path) -> None:
    """Copying a value is an identity copy only if its tokens are the same in the prompt and the answer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "dense")
    for context, value in [("Account holder: Amara Bianchi\nPlan: Growth Yearly", "Amara Bianchi"),
                           ("Account holder: Amara Bianchi\nPlan: Growth Yearly", "Growth Yearly"),
                           ("Where is order S-64953?", "S-64953"),
                           ("Liability 17.9: body", "Liability 17.9"),
                           ("Ciudad de envío: Zaragoza. Importe: 975,09 €", "Zaragoza")]:
        ctx, val = tok(context, add_special_tokens=False).input_ids, tok(value, add_special_tokens=False).input_ids
        assert any(ctx[i : i + len(val)] == val for i in range(len(ctx))), (context, value, tok.convert_ids_to_tokens(val))
    assert tok.decode(tok("Hi there, Amara: $1.50\n ok").input_ids) == "Hi there, Amara: $1.50\n ok"


def test_followups_are_later_turns_with_loss_on_answers_only(built: Path) -> None:
    from transformers import AutoTokenizer

    from testbed.data import generate, request_messages
    from testbed.train import IGNORE, encode

    tok = AutoTokenizer.from_pretrained(built / "dense")
    row = next(r for r in generate("train", {"billing": 5}, seed=3) if len(r.get("followups", [])) == 2)
    ids, labels = encode(tok, row)
    first = tok.apply_chat_template(request_messages(row), add_generation_prompt=True, tokenize=False)
    first_ids = tok(first, add_special_tokens=False).input_ids
    assert ids[: len(first_ids)] == first_ids  # turn 1 is exactly the request the runner sends
    answers = [row["expected"]["answer"]] + [f["answer"] for f in row["followups"]]
    targets = tok.decode([t for t in labels if t != IGNORE])
    assert targets == "<|im_end|>".join(answers) + "<|im_end|>"
    assert sum(1 for f in generate("heldout", {"billing": 20, "legal": 20, "multilingual": 20}, seed=3) if "followups" in f) == 0


def test_piece_echo_drills_copy_words_made_of_the_tokenizers_letter_pieces(built: Path) -> None:
    """Rare letter pieces (`Bus` in `Business`) become copy targets, so held-out words come out whole."""
    import random

    from transformers import AutoTokenizer

    from testbed.data import make_piece_echo
    from testbed.tokenizer import letter_pieces

    tok = AutoTokenizer.from_pretrained(built / "dense")
    pieces = letter_pieces(tok)
    assert pieces and all(p.isalpha() for p in pieces) and {"P", "E"} <= set(pieces)
    assert set(pieces) <= {tok.convert_tokens_to_string([t]).rstrip(" ") for t in tok.get_vocab()}
    rng = random.Random(0)
    rows = [make_piece_echo(rng, pieces) for _ in range(300)]
    starts = {p for p in pieces if p[0].isupper()}
    for row in rows:
        answer = row["expected"]["answer"]
        assert row["messages"][0]["content"] == f"Repeat exactly: {answer}"
        assert all(any(word.startswith(s) for s in starts) for word in answer.split(" "))
    used = {p for p in starts if any(p in row["expected"]["answer"] for row in rows)}
    assert len(used) >= min(len(starts), 100)  # drawn across the vocabulary, not a few favourites


def test_drill_phase_draws_its_batches_from_the_drills_only() -> None:
    import random

    from testbed.train import _batches, phased_batches

    examples = [([1, 2, 3], [-100, 2, 3]), ([1, 2], [-100, 2])] * 8
    drills = [([7, 8, 9], [-100, 8, 9])] * 4
    stream = phased_batches(examples, drills, drill_steps=3, batch_size=2, seed=0, pad=0)
    tokens = [set(next(stream)[0].flatten().tolist()) for _ in range(8)]
    assert all(t <= {7, 8, 9} for t in tokens[:3]) and all(t <= {0, 1, 2, 3} for t in tokens[3:])
    # Without a drill phase the batches are exactly the earlier recipe's, so older builds rebuild bit for bit.
    plain, old = phased_batches(examples, [], 0, 2, 5, 0), _batches(examples, 2, random.Random(5), 0)
    assert all(next(plain)[0].equal(next(old)[0]) for _ in range(10))
    with pytest.raises(ValueError, match="drill"):
        next(phased_batches(examples, [], 2, 2, 0, 0))


def test_moe_seed_changes_the_moe_model_only_and_builds_repeat_bit_for_bit(built: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from testbed.build import main

    main(["--smoke", "--moe-seed", "7", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "build_summary.json").read_text())
    assert (summary["dense"]["seed"], summary["moe"]["seed"]) == (1234, 7)
    assert [(summary[k]["steps"], summary[k]["drill_steps"]) for k in ("dense", "moe")] == [(3, 1), (3, 1)]  # smoke: a few steps each
    for kind, same in (("dense", True), ("moe", False)):
        this, default = load_file(tmp_path / kind / "model.safetensors"), load_file(built / kind / "model.safetensors")
        assert this.keys() == default.keys()
        assert all(this[k].equal(default[k]) for k in default) == same, kind


@pytest.mark.parametrize("args, message", [
    (["--steps", "100", "--drill-steps", "100"], "--drill-steps (100) must be at least 0 and fewer than --steps (100)"),
    (["--moe-steps", "100", "--moe-drill-steps", "150"], "--moe-drill-steps (150) must be at least 0 and fewer than --moe-steps (100)"),
])
def test_a_drill_phase_not_shorter_than_its_models_steps_is_refused(args: list[str], message: str, capsys) -> None:
    from testbed.build import main

    with pytest.raises(SystemExit):
        main(["--only", "moe", *args])
    assert message in capsys.readouterr().err


def test_shared_word_recall_drills_need_the_whole_label() -> None:
    """Labels like `Deposit date` / `Permit date`: only the word they do not share picks the line."""
    import re

    from testbed.data import generate

    shared = 0
    for row in generate("train", {"recall": 300}, seed=5):
        pairs = [re.fullmatch(r"(?:The )?(.+?)(?::| is) (.+?)\.?", line).groups() for line in row["context"].split("\n")]
        words = [label.lower().split() for label, _ in pairs]
        common = set.intersection(*(set(w) for w in words))
        if not (common & {"date", "amount"}) or any(len(w) != 2 for w in words):
            continue
        shared += 1
        question = row["messages"][0]["content"].lower()
        named = [value for (label, value) in pairs if label.lower() in question]
        assert named == [row["expected"]["answer"]], row
        assert len({tuple(w) for w in words}) == len(words)  # the labels differ, in one word only
    assert 60 <= shared <= 120  # about 30 % of the look-up drills


def test_legal_distractor_bodies_mark_other_clauses_of_training_rows_only() -> None:
    """Training legal rows: other clauses' bodies name the asked topic, so only the heading picks the clause."""
    from testbed.data import generate

    marked = 0
    for row in generate("train", {"legal": 200}, seed=5):
        for line in row["context"].split("\n"):
            heading = line.split(":")[0]
            if heading == row["expected"]["answer"]:
                assert "It does not cover" not in line
            marked += "It does not cover" in line
    assert marked > 100  # about half the other clauses (2-3 a row)
    assert not any("It does not cover" in row["context"] for row in generate("heldout", {"legal": 200}, seed=5))
