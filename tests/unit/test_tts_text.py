"""Text normalisation, sentence splitting, the compare rule and the OpenAI voice mapping."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from gateway.routing import choose_service
from gateway.state import GatewayState
from gateway.tts import OPENAI_VOICES, backend_kind_for_voice, map_openai_voice
from voicemesh.registry import ReplicaInfo, ReplicaLoad
from voicemesh.tts.compare import (
    CandidateMeasure,
    recommend,
    recommendation_reason,
    recommendation_rule,
)
from voicemesh.tts.joins import trim_join
from voicemesh.tts.text import (
    normalize_text,
    phrase_cut,
    readable,
    split_for_streaming,
    split_sentences,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Dr. Smith met Mr. Jones.", "Doctor Smith met Mister Jones."),
        ("It costs $42.50 today.", "It costs 42 dollars and 50 cents today."),
        ("It costs $1 now.", "It costs 1 dollar now."),
        ("Only £3.05 left.", "Only 3 pounds and 5 pence left."),
        ("A 15% rise in 1,200 homes", "A 15 percent rise in 1200 homes"),
        ("Fruit, e.g. apples, i.e. food", "Fruit, for example apples, that is food"),
        ("See No. 5 and say no.", "See number 5 and say no."),
        ("IT WAS THE FIRST GREAT SORROW", "it was the first great sorrow"),
        ("NASA launched it", "NASA launched it"),
        ("  spaced\u00a0 out\ttext ", "spaced out text"),
    ],
)
def test_normalize_text_reads_abbreviations_money_and_shouting(text: str, spoken: str) -> None:
    assert normalize_text(text) == spoken


def test_normalize_text_leaves_other_languages_alone() -> None:
    assert normalize_text("Dr. 你好 $5", language="zh-CN") == "Dr. 你好 $5"


def test_split_sentences_keeps_abbreviation_free_sentences_and_quotes() -> None:
    assert split_sentences('One here. "Two there." Three? (Four.) five') == [
        "One here.",
        '"Two there."',
        "Three?",
        "(Four.)",
        "five",
    ]
    cjk = "你好。今天很好！走吧"  # noqa: RUF001 - CJK sentence ends
    assert split_sentences(cjk) == [cjk[:3], cjk[3:8], cjk[8:]]
    assert split_sentences("   ") == []


def test_split_sentences_cuts_long_text_at_clauses_then_words() -> None:
    long = ", ".join(["word " * 10] * 10).strip()
    pieces = split_sentences(long, max_chars=120)
    assert all(len(p) <= 120 for p in pieces)
    assert " ".join(pieces).split() == long.split()
    assert split_sentences("x" * 250, max_chars=100) == ["x" * 100, "x" * 100, "x" * 50]


def test_split_for_streaming_sends_a_long_first_clause_alone() -> None:
    text = "The quick brown fox jumps over, the lazy dog today. Second one."
    assert split_for_streaming(text) == [
        "The quick brown fox jumps over,",
        "the lazy dog today.",
        "Second one.",
    ]
    # A short first clause is not worth its own chunk.
    assert split_for_streaming("Yes, it is. Fine.") == ["Yes, it is.", "Fine."]


def test_split_for_streaming_cuts_a_long_first_sentence_at_an_early_phrase_break() -> None:
    text = "Please remind me to take my medicine at eight o'clock tonight. Thanks."
    assert split_for_streaming(text) == [
        "Please remind me,",
        "to take my medicine at eight o'clock tonight.",
        "Thanks.",
    ]
    # After a comma whose clause is too short to go alone.
    assert split_for_streaming("I have added milk, eggs and bread to your list.") == [
        "I have added milk,",
        "eggs and bread to your list.",
    ]
    # Only the first sentence is cut; later ones are whole.
    later = "Please remind me to take my medicine at eight o'clock tonight."
    assert split_for_streaming(f"Hello there. {later}") == ["Hello there.", later]


@pytest.mark.parametrize(
    "sentence",
    [
        "Turn the lights off now please.",  # under 8 words: spoken whole
        "Bright yellow sunflowers filled every single field and meadow there.",  # no break
        "One two to three four five six seven.",  # break too early (after 2 words)
        "The quick brown fox jumps over the lazy dog at dawn.",  # break at word 9: too late
        "今天天气很好\uff0c我们去公园散步吧\uff0c然后回家吃饭。",  # no spaces: never cut by words
    ],
)
def test_phrase_cut_leaves_a_sentence_whole_without_an_early_break(sentence: str) -> None:
    assert phrase_cut(sentence) is None


def test_phrase_cut_keeps_enough_words_after_the_cut() -> None:
    # "for" is a starter at word 4, but only three words would follow it.
    assert phrase_cut("We waited a long time for the bus.") is None
    cut = phrase_cut("We waited a long time for the late evening bus.")
    assert cut is not None
    assert "We waited a long time for the late evening bus."[cut:] == "for the late evening bus."


def test_trim_join_cuts_silence_at_a_join_to_a_short_pause_and_fades() -> None:
    rate = 1000
    speech = np.full(500, 0.5, dtype=np.float32)
    silence = np.zeros(200, dtype=np.float32)
    audio = np.concatenate([silence, speech, silence])
    before = trim_join(audio, rate, end_s=0.05)
    assert len(before) == 750  # all its leading silence, the speech, 50 ms of silence
    assert before[-1] == 0.0  # faded to nothing: no click at the join
    assert before[400] == 0.5  # the speech itself is untouched
    after = trim_join(audio, rate, start_s=0.01)
    assert len(after) == 710  # 10 ms of silence, the speech, all its trailing silence
    assert after[0] == 0.0
    assert after[300] == 0.5
    # Nothing but silence: kept as it is.
    assert len(trim_join(silence, rate, start_s=0.0, end_s=0.0)) == 200


def test_recommend_prefers_the_fastest_candidate_of_ordinary_length() -> None:
    candidates = [
        CandidateMeasure(duration_s=3.0, speed=1.0, rtf=0.20),
        CandidateMeasure(duration_s=1.5, speed=2.0, rtf=0.15),  # same length at its speed
        CandidateMeasure(duration_s=0.5, speed=1.0, rtf=0.01),  # cut short: not eligible
    ]
    assert recommend(candidates) == 1
    assert recommend([CandidateMeasure(2.0, 1.0, 0.1), CandidateMeasure(2.0, 1.0, 0.1)]) == 0
    assert recommend([]) is None


def test_the_recommendation_reason_states_the_rule_and_the_numbers_it_compared() -> None:
    candidates = [
        CandidateMeasure(duration_s=3.0, speed=1.0, rtf=0.20, latency_ms=610.0),
        CandidateMeasure(duration_s=1.5, speed=2.0, rtf=0.15, latency_ms=240.0),
        CandidateMeasure(duration_s=0.5, speed=1.0, rtf=0.01, latency_ms=20.0),  # cut short
    ]
    labels = ["joe", "sarah", "adam"]
    assert recommend(candidates, "latency_ms") == 1
    reason = recommendation_reason(candidates, labels, "latency_ms")
    assert reason.startswith("#1 sarah has the lowest latency_ms (240)")
    assert "median length 3.00 s" in reason
    assert "#0 joe: latency_ms 610" in reason and "#2 adam: latency_ms 20 " in reason
    assert "left out: length off the median" in reason
    assert recommendation_rule("latency_ms") in reason
    # By audio duration the shortest plausible one wins (the cut one stays out).
    assert recommend(candidates, "duration_seconds") == 1


def test_openai_voices_map_to_the_first_installed_choice() -> None:
    assert map_openai_voice("alloy", {"en_US-joe-medium"}) == "en_US-joe-medium"
    assert map_openai_voice("Nova", {"en_US-joe-medium", "matcha-ljspeech"}) == "matcha-ljspeech"
    assert map_openai_voice("onyx", {"kokoro-am_adam", "en_US-joe-medium"}) == "kokoro-am_adam"
    assert map_openai_voice("zh-fanchen-C-3", set()) == "zh-fanchen-C-3"
    # Every OpenAI name ends with the bundled voice, so it always speaks.
    assert all(choices[-1] == "en_US-joe-medium" for choices in OPENAI_VOICES.values())


async def test_catalogue_voices_are_served_by_tts_vits() -> None:
    state = cast(GatewayState, object())  # tts_vits voices need nothing from the state
    assert await backend_kind_for_voice(state, "en_US-joe-medium") == "tts_vits"
    assert await backend_kind_for_voice(state, None) == "tts_vits"


def _replica(iid: str, kind: str, active: int, **extra: object) -> ReplicaInfo:
    return ReplicaInfo(
        instance_id=iid,
        kind=kind,
        url=f"http://{iid}",
        started_at=0,
        updated_at=0,
        capabilities=["synthesize", "voices"],
        load=ReplicaLoad(active_sessions=active, max_sessions=10),
        **extra,
    )


def test_choose_service_orders_one_kind_by_load_and_skips_draining() -> None:
    replicas = [
        _replica("a", "tts_vits", 5),
        _replica("b", "tts_vits", 1),
        _replica("c", "tts_vits", 0, draining=True),
        _replica("d", "stt_cpu_ws", 0),
        _replica("e", "tts_vits", 0, healthy=False),
    ]
    chosen = choose_service("tts_vits", replicas, capability="synthesize")
    assert [r.instance_id for r in chosen] == ["b", "a"]
    assert choose_service("tts_vits", replicas, capability="compare") == []


def test_what_no_voice_can_read_is_dropped() -> None:
    # A NUL cut espeak's C string short and failed the request (found by the HTTP fuzz).
    fuzzed = "\u00ae\u0000=C\u00f32\U000795a5\u0007\u000f\ud079\U000284c2\u0085\U000dab7f\u7508"
    assert readable(fuzzed) == "\u00ae=C\u00f32\ud079\U000284c2\u7508"
    assert readable("one\ttwo\nthree\r\nfour") == "one two three  four"
    assert normalize_text("a\u0000b \ue000c") == "ab c"
    assert normalize_text("\u0000\u0007") == ""
