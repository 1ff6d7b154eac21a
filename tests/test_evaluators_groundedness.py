"""groundedness and hallucination (lexical backend) on hand-written cases."""

import pytest

from evaluators import EvalRecord, get_evaluator
from evaluators.claims import build_claims, split_sentences

CTX = (
    "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall. "
    "The tower was designed by Gustave Eiffel's company."
)


def rec(text, question=None, context=CTX):
    msgs = [{"role": "user", "content": question}] if question else []
    return EvalRecord(prompt_id="p", messages=msgs, context=context, text=text)


def both(*records):
    recs = list(records)
    return get_evaluator("groundedness").evaluate(recs), get_evaluator("hallucination").evaluate(recs)


def test_supported_sentence_passes():
    (g,), (h,) = both(rec("The Eiffel Tower is in Paris. It is 330 metres tall."))
    assert g.applicable and g.passed is True and g.score > 0.7
    assert g.details["unsupported"] == []
    assert (h.score, h.passed) == (1.0, True)
    assert h.details["n_claims"] == 2


def test_number_mismatch_is_unsupported():
    (g,), (h,) = both(rec("It was completed in 1887.", question="When was the Eiffel Tower completed?"))
    assert g.passed is False and g.score < 0.1
    assert g.details["claims"][0]["not_in_context"] == ["1887"]
    assert (h.score, h.passed) == (0.0, False)


def test_bare_phrase_answer_judged_with_question():
    claims = build_claims("Paris", "Where is the Eiffel Tower?")
    assert claims[0].check_text == "Where is the Eiffel Tower? Paris"
    (g_ok, g_bad), (h_ok, h_bad) = both(rec("Paris", question="Where is the Eiffel Tower?"), rec("Lyon", question="Where is the Eiffel Tower?"))
    assert g_ok.passed is True and g_bad.passed is False
    assert g_ok.score > g_bad.score + 0.5
    assert g_bad.details["unsupported"] == ["Lyon"]
    assert (h_ok.passed, h_bad.passed) == (True, False)


def test_negation_contradiction():
    (g,), (h,) = both(rec("The Eiffel Tower is not in Paris."))
    assert g.passed is False
    assert g.details["claims"][0]["contradicted"] is True
    assert h.passed is False
    assert h.details["contradicted"] == ["The Eiffel Tower is not in Paris."]


def test_one_unsupported_claim_among_several_is_listed():
    (g,), (h,) = both(rec("The Eiffel Tower is in Paris. It was designed by Thomas Edison."))
    assert g.details["unsupported"] == ["It was designed by Thomas Edison."]
    assert g.details["claims"][1]["not_in_context"] == ["Thomas", "Edison"]
    assert h.score == 0.5 and h.passed is False
    assert [c["claim"] for c in h.details["hallucinated_claims"]] == ["It was designed by Thomas Edison."]


def test_compound_sentence_split_into_clauses():
    (h,) = get_evaluator("hallucination").evaluate([rec("The Eiffel Tower was completed in 1889 and it was painted green by Napoleon.")])
    assert h.details["n_claims"] == 2
    assert [c["claim"] for c in h.details["hallucinated_claims"]] == ["it was painted green by Napoleon."]


def test_missing_context_or_answer_not_applicable():
    (g1, g2, g3), (h1, h2, h3) = both(rec("Paris", context=None), rec("Paris", context="   "), rec("", question="Where?"))
    for r in (g1, g2, g3, h1, h2, h3):
        assert (r.applicable, r.score, r.passed) == (False, None, None)
    assert g1.reason == "no context to check against"
    assert g3.reason == "no answer text"


def test_batch_result_independent_of_order():
    a, b = rec("Paris", question="Where is the Eiffel Tower?"), rec("It was designed by Thomas Edison.")
    g1 = get_evaluator("groundedness").evaluate([a, b])
    g2 = get_evaluator("groundedness").evaluate([b, a])
    assert g1[0].score == pytest.approx(g2[1].score) and g1[1].score == pytest.approx(g2[0].score)


def test_sentence_splitter_handles_glued_sentences_and_abbreviations():
    assert split_sentences("It was in the 19th century.First for Women is a magazine.") == ["It was in the 19th century.", "First for Women is a magazine."]
    assert split_sentences("Dr. Smith met Mr. Jones. They talked.") == ["Dr. Smith met Mr. Jones.", "They talked."]


def test_unknown_backend_and_nli_without_model_dir():
    with pytest.raises(ValueError, match="unknown backend"):
        get_evaluator("groundedness", {"backend": "magic"}).evaluate([rec("Paris")])
    with pytest.raises(ValueError, match="model_dir"):
        get_evaluator("groundedness", {"backend": "nli"}).evaluate([rec("Paris")])


def test_words_from_the_conversation_are_given():
    msgs = [
        {"role": "user", "content": "My friend Gustavo says the tower is in Paris."},
        {"role": "assistant", "content": "Let me check."},
        {"role": "user", "content": "So is it?"},
    ]
    r = EvalRecord(messages=msgs, context=CTX, text="Yes Gustavo, the Eiffel Tower is in Paris.")
    (h,) = get_evaluator("hallucination").evaluate([r])
    assert (h.score, h.passed) == (1.0, True)
    (h2,) = get_evaluator("hallucination").evaluate([EvalRecord(context=CTX, text="Yes Gustavo, the Eiffel Tower is in Paris.")])
    assert [c["claim"] for c in h2.details["hallucinated_claims"]] == ["Yes Gustavo, the Eiffel Tower is in Paris."]


def test_non_latin_scripts_are_checked():
    ctx = "Столица России — Москва. Население города превышает 13 миллионов."
    ok, bad = (rec(a, question="Какая столица России?", context=ctx) for a in ("Москва", "Париж"))
    (g_ok, g_bad), _ = both(ok, bad)
    assert (g_ok.passed, g_bad.passed) == (True, False)
    assert g_bad.details["unsupported"] == ["Париж"]


def test_glued_words_in_the_context_are_found():
    # Knowledge-graph dumps and scraped tables lose spaces: "TurboTurbo", "DoggSnoop".
    ctx = "Ryan Reynolds starred in TurboTurbo is starring Snoop DoggSnoop Dogg starred in Turbo"
    (h,) = get_evaluator("hallucination").evaluate([rec("Snoop Dogg starred in Turbo.", context=ctx)])
    assert (h.score, h.passed) == (1.0, True)
    (g,) = get_evaluator("groundedness").evaluate([rec("Snoop Dogg starred in Turbo with Tom Hanks.", context=ctx)])
    assert g.passed is False
    assert g.details["claims"][0]["not_in_context"] == ["Tom", "Hanks"]


def test_reporting_verbs_need_no_support():
    (g,), (h,) = both(rec("The Eiffel Tower is 330 metres tall, officials said."))
    assert g.details["claims"][0].get("not_in_context") == ["officials"]
    (g2,), _ = both(rec("The tower was completed in 1889, according to reports."))
    assert g2.details["claims"][0].get("not_in_context") is None
    assert g2.passed is True


def test_titles_do_not_end_sentences():
    assert split_sentences("The Rev. Robert Schuller died. Gov. Asa Hutchinson spoke.") == ["The Rev. Robert Schuller died.", "Gov. Asa Hutchinson spoke."]


def test_answers_sharing_a_context_keep_their_own_claims():
    (g1, g2, g3), (h1, h2, h3) = both(
        rec("The Eiffel Tower is in Paris."), rec("It was designed by Thomas Edison."), rec("Paris", context="Lyon is in France.", question="Where?")
    )
    assert (g1.passed, g2.passed, g3.passed) == (True, False, False)
    assert [c["claim"] for c in g1.details["claims"]] == ["The Eiffel Tower is in Paris."]
    assert g2.details["unsupported"] == ["It was designed by Thomas Edison."]
    assert (h1.passed, h2.passed, h3.passed) == (True, False, False)


def test_long_context_scored_in_chunks_same_as_at_once(monkeypatch):
    from evaluators import lexical

    filler = " ".join(f"Report number {i} covers the weather in district {i}." for i in range(3000))
    ctx = filler + " The Eiffel Tower is in Paris. " + filler
    recs = [rec("The Eiffel Tower is in Paris.", context=ctx), rec("The tower is in Lyon.", context=ctx), rec("Report 17 covers the weather in district 17.", context=ctx)]
    at_once = get_evaluator("groundedness").evaluate(recs)
    assert [r.passed for r in at_once] == [True, False, True]
    assert at_once[0].details["claims"][0]["evidence"].startswith("The Eiffel Tower is in Paris.") or at_once[0].details["claims"][0]["evidence"].endswith("The Eiffel Tower is in Paris.")
    assert at_once[1].details["claims"][0]["not_in_context"] == ["Lyon"]
    monkeypatch.setattr(lexical, "_MAX_PAIRS", 1000)  # forces many chunks
    chunked = get_evaluator("groundedness").evaluate(recs)
    assert [r.score for r in chunked] == pytest.approx([r.score for r in at_once])
    assert [r.details["claims"] for r in chunked] == [r.details["claims"] for r in at_once]


NEWS = "A bomb exploded near the central station on Monday, police said. Investigators from Robinson Forensics examined the site."


def test_word_family_variants_are_found_but_names_match_exactly():
    # "explosion" shares its first five letters with "exploded": a paraphrase, not a new fact.
    (g,), _ = both(rec("A bomb explosion near the central station on Monday.", context=NEWS))
    assert g.passed is True
    assert g.details["claims"][0].get("not_in_context") is None
    # A name never matches by prefix: "Robin" is not "Robinson".
    (g2,), _ = both(rec("The site was examined by Robin Forensics.", context=NEWS))
    assert g2.passed is False
    assert g2.details["claims"][0]["not_in_context"] == ["Robin"]


def test_few_missing_counts_the_new_words_not_in_the_context():
    from evaluators import lexical

    claims = build_claims("A bomb exploded near the central station, killing nine tourists.")
    ev = lexical.claim_evidence(claims, [NEWS], [0] * len(claims))
    assert ev.missing == [["killing", "nine", "tourists"]]
    assert ev.features[0, lexical.FEATURES.index("few_missing")] == pytest.approx(1 / 4)
    ev_ok = lexical.claim_evidence(build_claims("A bomb exploded near the central station."), [NEWS], [0])
    assert ev_ok.features[0, lexical.FEATURES.index("few_missing")] == 1.0


def test_function_words_ending_in_s_stay_function_words():
    from evaluators.claims import content_words

    # norm() strips a final "s" ("perhaps" -> "perhap"): the word lists hold that spelling too.
    assert content_words("Perhaps this does help") == ["help"]
    (g,), _ = both(rec("Perhaps a bomb exploded near the central station.", context=NEWS))
    assert g.passed is True
    assert g.details["claims"][0].get("not_in_context") is None


def test_default_threshold_is_the_calibrated_decision_point():
    from evaluators import lexical

    assert lexical.CLAIM_THRESHOLD == 0.5
    (g,), (h,) = both(rec("The site was examined by Robinson Forensics.", context=NEWS))
    assert g.details["threshold"] == 0.5
    # Support about 0.72: under the earlier QA F1-best threshold (0.723) this grounded
    # rewording failed; at 0.5 it passes.
    assert 0.5 < g.score < 0.723
    assert (g.passed, h.passed) == (True, True)
