import pytest

from tts_runner.job.chunking import split_text


def test_short_text_is_one_chunk():
    assert split_text("Hello there.", 120) == ["Hello there."]


def test_sentences_are_packed_up_to_the_limit_and_kept_whole():
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    chunks = split_text(text, 32)
    assert chunks == ["One two three. Four five six!", "Seven eight nine?", "Ten eleven twelve."]
    assert all(len(c) <= 32 for c in chunks)


def test_text_is_preserved_word_for_word():
    text = "  Alpha beta,   gamma.\nDelta epsilon!  " * 20
    chunks = split_text(text, 50)
    assert " ".join(chunks).split() == text.split()


def test_long_sentence_without_punctuation_never_splits_inside_a_word():
    words = [f"word{i}" for i in range(80)]
    chunks = split_text(" ".join(words), 40)
    assert all(len(c) <= 40 for c in chunks)
    assert [w for c in chunks for w in c.split()] == words


def test_long_sentence_prefers_clause_boundaries():
    text = "This clause is fairly long, and this one is long too, and the last one ends here"
    chunks = split_text(text, 40)
    assert chunks[0] == "This clause is fairly long,"
    assert all(len(c) <= 40 for c in chunks)


def test_a_single_word_longer_than_the_limit_stays_whole():
    url = "https://example.com/" + "x" * 70
    assert split_text(f"See {url} now.", 50) == ["See", url, "now."]


def test_a_run_of_characters_beyond_twice_the_limit_is_cut():
    junk = "x" * 20000
    chunks = split_text(f"Start {junk} end.", 120)
    assert max(map(len, chunks)) <= 120 and "".join(chunks).replace(" ", "") == f"Start{junk}end."


def test_cjk_punctuation_splits_sentences_without_spaces():
    text = "今天天气很好。我们去公园散步吧！你觉得怎么样？" * 4
    chunks = split_text(text, 30)
    assert "".join(chunks) == text
    assert all(len(c) <= 30 for c in chunks)
    assert all(c[-1] in "。！？" for c in chunks)


def test_cjk_without_punctuation_splits_between_characters():
    text = "我" * 100
    chunks = split_text(text, 30)
    assert "".join(chunks) == text and max(map(len, chunks)) == 30


def test_japanese_and_korean():
    ja = "これはテストです。" * 10
    ko = "안녕하세요. 반갑습니다. " * 10
    assert "".join(split_text(ja, 40)) == ja
    assert " ".join(split_text(ko, 40)).split() == ko.split()


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_text_gives_no_chunks(text):
    assert split_text(text, 120) == []
