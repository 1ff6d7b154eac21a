"""The offline routing probe on a tiny Mixtral whose routing is known by construction."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from harness.experts.probe import chat_token_ids, load_moe, probe_records, route_sequences  # noqa: E402
from harness.experts.stats import aggregate  # noqa: E402
from harness.testing.tiny_moe import WORDS, write_tiny_moe  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    info = write_tiny_moe(tmp_path_factory.mktemp("tiny_moe"))
    model, tokenizer = load_moe(info.path)
    return info, model, tokenizer


def test_checkpoint_is_a_mixtral_with_router_logits(tiny):
    info, model, tokenizer = tiny
    assert type(model).__name__ == "MixtralForCausalLM"
    assert (model.config.num_local_experts, model.config.num_experts_per_tok) == (4, 2)
    ids = chat_token_ids(tokenizer, [{"role": "user", "content": "apple banana"}], "cherry")
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|im_start|>", "user", "apple", "banana", "<|im_end|>", "<|im_start|>", "assistant", "cherry"]


def test_routing_matches_construction_with_padding(tiny):
    info, model, _ = tiny
    rng = random.Random(0)
    vocab_ids = list(info.vocab.values())
    seqs = [[rng.choice(vocab_ids) for _ in range(n)] for n in (1, 5, 17, 9, 30, 2, 11)]
    calls = []
    batched = route_sequences(model, seqs, batch_size=3, progress=lambda done, total: calls.append((done, total)))
    single = route_sequences(model, seqs, batch_size=1)
    assert calls[-1] == (len(seqs), len(seqs)) and len(calls) == 3
    for seq, got, alone in zip(seqs, batched, single):
        assert got.tokens == len(seq) and len(got.layers) == info.layers
        for layer in range(info.layers):
            ids, probs = info.expected_routing(seq, layer)
            np.testing.assert_array_equal(got.layers[layer].top_k_ids, ids)  # exact, in rank order
            np.testing.assert_allclose(got.layers[layer].probs, probs, atol=1e-5)
            # padded positions are cut: right-padded batches route like one sequence at a time
            np.testing.assert_array_equal(alone.layers[layer].top_k_ids, got.layers[layer].top_k_ids)
            np.testing.assert_allclose(alone.layers[layer].probs, got.layers[layer].probs, atol=1e-6)


def _cohort(tokenizer, rng, main: str, n: int):
    """Chat rows whose questions and answers are mostly `main`-class words, some "c" words."""
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS[main]) if rng.random() < 0.8 else rng.choice(WORDS["c"]) for _ in range(rng.randint(3, 12))]
        answer = " ".join(rng.choice(WORDS[main]) for _ in range(rng.randint(1, 4)))
        rows.append(chat_token_ids(tokenizer, [{"role": "user", "content": " ".join(words)}], answer))
    return rows


def test_cohort_utilization_matches_closed_form(tiny):
    info, model, tokenizer = tiny
    rng = random.Random(7)
    cohorts = {"a-heavy": _cohort(tokenizer, rng, "a", 12), "b-heavy": _cohort(tokenizer, rng, "b", 9)}
    stats = {}
    for name, seqs in cohorts.items():
        records = probe_records(model, seqs, sources=[f"{name}/{i}" for i in range(len(seqs))], batch_size=4)
        assert [r.source for r in records] == [f"{name}/{i}" for i in range(len(seqs))]
        group = aggregate(records, source=name)
        stats[name] = group
        # closed form: every token gives one assignment to each of its class's 2 experts
        tokens = sum(len(s) for s in seqs)
        assert group.tokens == tokens
        for layer in range(info.layers):
            counts = np.zeros(info.num_experts)
            for s in seqs:
                for t in s:
                    for e in info.experts(t, layer):
                        counts[e] += 1
            expected = counts / counts.sum()
            assert group.utilization[layer] == pytest.approx(tuple(expected), abs=0.02)
            assert group.utilization[layer] == tuple(expected)  # exact: same integer counts
        # every token's router logits are (2s, s, 0, 0) up to a permutation: one closed-form entropy and mass
        n = 1.0 / math.sqrt(1.0 / info.hidden + info.rms_eps)
        p = np.exp([n, n / 2, 0.0, 0.0])
        p /= p.sum()
        assert group.router_entropy.mean == pytest.approx(-(p * np.log(p)).sum() / math.log(4), abs=1e-5)
        assert group.top_k_mass.mean == pytest.approx(p[0] + p[1], abs=1e-5)
    a, b = stats["a-heavy"], stats["b-heavy"]
    # layer 0: a-words use experts {0, 1}, b-words {2, 3}; layer 1 shifts every expert by one
    assert a.utilization[0][0] + a.utilization[0][1] > 0.6 > b.utilization[0][0] + b.utilization[0][1]
    assert b.utilization[1][3] + b.utilization[1][0] > 0.6 > a.utilization[1][3] + a.utilization[1][0]
    assert a.to_json()["source"] == "a-heavy"


def test_probe_rejects_bad_input(tiny):
    _, model, _ = tiny
    with pytest.raises(ValueError, match="empty"):
        route_sequences(model, [[1, 2], []])
    with pytest.raises(ValueError, match="positions"):
        route_sequences(model, [[1] * 300])
    with pytest.raises(ValueError, match="sources"):
        probe_records(model, [[1, 2]], sources=["x", "y"])


TESTBED_MOE = __import__("pathlib").Path(__file__).resolve().parents[1] / "testbed" / "models" / "moe"


@pytest.mark.skipif(not (TESTBED_MOE / "model.safetensors").is_file(), reason="no testbed MoE checkpoint")
def test_testbed_checkpoint_batched_routing_equals_one_at_a_time():
    # A trained model with live attention: right padding + attention mask must not change routing.
    import torch

    model, tokenizer = load_moe(TESTBED_MOE)
    rows = [
        ([{"role": "user", "content": "What is the amount due?"}], "$142.50"),
        ([{"role": "system", "content": "Context:\nPlan: Premium Monthly\nAmount due: $412.54"},
          {"role": "user", "content": "Quick question: what is the payment due date? Please answer briefly."}], "2022-07-18"),
        ([{"role": "user", "content": "Track order 88412"}], '<tool_call>\n{"name": "track_order"}\n</tool_call>'),
    ]
    seqs = [chat_token_ids(tokenizer, m, a) for m, a in rows]
    assert len({len(s) for s in seqs}) == 3
    batched = route_sequences(model, seqs, batch_size=3)
    single = route_sequences(model, seqs, batch_size=1)
    E, k = model.config.num_local_experts, model.config.num_experts_per_tok
    for seq, b, s in zip(seqs, batched, single):
        assert len(b.layers) == model.config.num_hidden_layers
        # the probe's top-k are the experts the model's own router picks (hook on the gate, unbatched)
        picked = []
        hooks = [layer.mlp.gate.register_forward_hook(lambda mod, inp, out: picked.append(out[2].clone()))
                 for layer in model.model.layers]
        with torch.inference_mode():
            model(input_ids=torch.tensor([seq]))
        for h in hooks:
            h.remove()
        for li in range(len(b.layers)):
            assert b.layers[li].probs.shape == (len(seq), E) and b.layers[li].top_k_ids.shape == (len(seq), k)
            np.testing.assert_allclose(b.layers[li].probs, s.layers[li].probs, atol=1e-5)
            np.testing.assert_array_equal(s.layers[li].top_k_ids, picked[li].numpy())
            np.testing.assert_array_equal(b.layers[li].top_k_ids, s.layers[li].top_k_ids)
