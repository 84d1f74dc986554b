from muxd.core.detokenize import IncrementalDetokenizer

VOCAB = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!", 6: "\xe9"}


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def test_text_accumulates_token_by_token():
    d = IncrementalDetokenizer(decode)
    pieces = [d.add([t]) for t in (1, 2, 3, 4)]
    assert "".join(pieces) == "Hello world" == d.text


def test_stop_string_cuts_the_text_and_stops():
    d = IncrementalDetokenizer(decode, stop=["wor"])
    out = "".join(d.add([t]) for t in (1, 2, 3, 4))
    out += d.flush()
    assert d.stopped and d.text == "Hello " and out == "Hello "


def test_text_that_may_start_a_stop_string_is_held_back():
    d = IncrementalDetokenizer(decode, stop=["lo!"])
    assert d.add([1]) == "H"  # "el" could still start "lo!"? no, but 2 chars are held
    assert d.add([2]) == "el"
    assert d.add([5]) == ""
    assert d.stopped and d.flush() == "" and d.text == "Hel"


def test_partial_utf8_waits_for_the_rest():
    def decode_bytes(ids):
        raw = b"".join({7: b"\xc3", 8: b"\xa9", 1: b"a"}[i] for i in ids)
        return raw.decode("utf-8", errors="replace")

    d = IncrementalDetokenizer(decode_bytes)
    assert d.add([1]) == "a"
    assert d.add([7]) == ""
    assert d.add([8]) == "\xe9"
