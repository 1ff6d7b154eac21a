"""The NLI groundedness backend loads a local cross-encoder and maps its labels.

No NLI model can be downloaded here, so the test builds a tiny BERT classifier whose head is
fixed (zero weights, a bias toward one label): it checks loading from a local directory, label
mapping, context windows and thresholds, not NLI quality.
"""

from pathlib import Path

import pytest

from evaluators import EvalRecord, get_evaluator

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def build_tiny_nli(out_dir: Path, favour: str) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] the eiffel tower is in paris rome it was completed 1889 .".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(out_dir)
    labels = ["entailment", "neutral", "contradiction"]
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        num_labels=3, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([6.0 if l == favour else 0.0 for l in labels]))
    model.save_pretrained(out_dir)
    return out_dir


@pytest.mark.parametrize("favour,supported,contradicted", [("entailment", True, False), ("contradiction", False, True)])
def test_nli_backend_from_local_dir(tmp_path, favour, supported, contradicted):
    model_dir = build_tiny_nli(tmp_path / favour, favour)
    rec = EvalRecord(context="The Eiffel tower is in Paris. It was completed in 1889.", text="The tower is in Paris. It was completed in 1889.")
    opts = {"backend": "nli", "model_dir": str(model_dir)}
    g = get_evaluator("groundedness", opts).evaluate([rec, EvalRecord(context=None, text="x")])
    assert g[0].applicable and g[0].passed is supported
    assert len(g[0].details["claims"]) == 2
    assert all(c["supported"] is supported for c in g[0].details["claims"])
    assert g[1].applicable is False
    h = get_evaluator("hallucination", opts).evaluate([rec])[0]
    assert h.passed is supported
    assert len(h.details["contradicted"]) == (2 if contradicted else 0)
