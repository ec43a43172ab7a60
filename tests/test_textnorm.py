from decap_core.textnorm import LengthLimits, NormalisationOptions, normalise, sentence_id, shard_of


def test_normalise_composes_unicode_and_collapses_whitespace():
    assert normalise("  a  cafe\u0301\tnext\u00a0to \n a circle  ") == "a caf\u00e9 next to a circle"
    assert normalise("A Red Circle", NormalisationOptions(lowercase=True)) == "a red circle"
    assert normalise(" \t ") == ""


def test_normalise_equals_the_regex_definition_on_every_whitespace_character():
    import re
    import sys
    import unicodedata

    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if re.match(r"\s", chr(c)))
    text = f"{spaces}a{spaces}red circle, cafe\u0301{spaces[::-1]}"
    expected = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    assert normalise(text) == expected == "a red circle, caf\u00e9"


def test_ids_follow_the_normalised_text_and_shards_are_stable():
    assert sentence_id(normalise("a  red circle ")) == sentence_id(normalise("a red circle"))
    assert sentence_id("a red circle") != sentence_id("a red square")
    assert len(sentence_id("x")) == 32
    assert shard_of(sentence_id("a red circle"), 7) == int(sentence_id("a red circle")[:16], 16) % 7


def test_length_limits_name_the_reason():
    limits = LengthLimits(context_length=10, min_tokens=3, max_tokens=8)
    assert limits.problem(11) == "exceeds_clip_context"
    assert limits.problem(2) == "too_short"
    assert limits.problem(9) == "too_long"
    assert limits.problem(5) is None
