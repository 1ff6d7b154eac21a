"""The testbed's look-up drill curriculum: layouts at their label-to-value distance, stages in proportion."""

from __future__ import annotations

import re

import pytest

from testbed.build import CURRICULUM, drill_stages
from testbed.data import generate


@pytest.mark.parametrize("layout, line", [("recall_near", r"(\S+) (\S.*)"), ("recall_colon", r"(\S+): (\S.*)")])
def test_easy_layouts_put_distinct_values_at_their_distance(layout: str, line: str) -> None:
    for row in generate("train", {layout: 50}, seed=11):
        assert row["cohort"] == layout
        pairs = [re.fullmatch(line, text).groups() for text in row["context"].split("\n")]
        values = [value for _, value in pairs]
        assert row["expected"]["answer"] in values
        # Only the label can pick the line: the values' first characters (letters/digits runs) all differ.
        leads = [re.match(r"[^\W\d_]+|\d{1,3}|.", v).group() for v in values]
        assert len(set(leads)) == len(leads), row["context"]


def test_last_layout_has_the_cohorts_constant_starts() -> None:
    rows = generate("train", {"recall": 300}, seed=11)
    assert {r["cohort"] for r in rows} == {"recall"}
    answers = [r["expected"]["answer"] for r in rows]
    assert any(a.startswith("$") for a in answers) and any(a.startswith("Clause ") for a in answers)
    assert any(c.startswith("The ") for c in (r["context"] for r in rows))  # prose lines too


def test_drill_stages_hold_each_layout_and_end_at_their_caps() -> None:
    rows = generate("train", {"billing": 40, "echo": 20, "recall_near": 14, "recall_colon": 8, "recall": 18}, seed=3)
    asked: list[str] = []
    base, stages = drill_stages([(r, i) for i, r in enumerate(rows)], (0.5, 0.7), steps=100, mastered=lambda k: asked.append(k) or True)
    assert sorted(base) == [i for i, r in enumerate(rows) if not r["cohort"].startswith("recall")]
    assert [s.name for s in stages] == list(CURRICULUM) and [s.until for s in stages] == [50, 70, 100]
    for stage in stages:
        assert sorted(stage.examples) == [i for i, r in enumerate(rows) if r["cohort"] == stage.name]
    assert stages[1].mastered() and asked == ["recall_colon"]


def test_training_moves_on_at_mastery_or_at_the_cap() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from testbed.train import IGNORE, DrillStage, train

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=1, num_key_value_heads=1, pad_token_id=0))
    row = ([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4])
    checked: list[str] = []

    def mastered(name: str, answer: bool):
        return lambda: checked.append(name) or answer

    drills = [DrillStage("near", [row], until=50, mastered=mastered("near", True)),
              DrillStage("colon", [row], until=7, mastered=mastered("colon", False)),
              DrillStage("any", [row], until=12)]
    result = train(model, [row], steps=12, batch_size=2, lr=1e-3, seed=1, pad_id=0, drills=drills, drill_share=0.5,
                   check_every=3, log=lambda m: None)
    # near is mastered at its first check (step 3); colon never is, so it ends at its cap (after step 7).
    assert result["drill_stage_starts"] == {"near": 1, "colon": 3, "any": 8}
    assert checked == ["near", "colon"]  # at steps 3 and 6; the cap needs no check, the last stage has none
