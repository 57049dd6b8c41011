"""A token batch laid out one chunk per line (as schedulers write it) is read with each chunk's
text, and Ollama's native stream relays that text instead of encoding the chunks again: the
same bytes. Batches laid out otherwise are read as before."""

from __future__ import annotations

from typing import Any

import orjson

from corral_common.broker import encode
from corral_common.messages import Started, Tokens
from corral_gateway.encoders import NdjsonEncoder, SseEncoder
from corral_gateway.hub import RawTokens, read_tokens
from corral_gateway.ollama.chunks import OllamaChunks


def chunk(content: str) -> dict[str, Any]:
    return {"model": "m", "message": {"role": "assistant", "content": content}, "done": False}


def laid_out(request_id: str, seq: int, lines: list[bytes], started: Started | None) -> bytes:
    # corral_scheduler.events.tokens_body's layout.
    head = b'{"kind":"token","request_id":%b,"seq":%d,"chunks":[\n' % (
        orjson.dumps(request_id),
        seq,
    )
    tail = b"\n]}" if started is None else b'\n],"started":%b}' % encode(started)
    return head + b",\n".join(lines) + tail


def test_a_batch_one_chunk_per_line_is_read_with_its_lines() -> None:
    chunks = [chunk(" a"), chunk(' "b"\n'), chunk(" é")]
    lines = [orjson.dumps(c) for c in chunks]
    started = Started(request_id="r1", waited_ms=2)
    for with_started in (None, started):
        tokens = read_tokens(laid_out("r1", 4, lines, with_started))
        assert isinstance(tokens, RawTokens)
        assert tokens.lines == lines
        assert (tokens.request_id, tokens.seq, tokens.chunks, tokens.started) == (
            "r1",
            4,
            chunks,
            with_started,
        )


def test_other_layouts_and_broken_batches_are_left_to_the_usual_reading() -> None:
    chunks = [chunk(" a")]
    assert read_tokens(encode(Tokens(request_id="r1", seq=0, chunks=chunks))) is None
    assert read_tokens(encode(Started(request_id="r1", waited_ms=0))) is None
    assert read_tokens(laid_out("r1", 0, [b'{"a":1'], None)) is None
    assert read_tokens(laid_out("r1", 0, [b"[1]"], None)) is None
    bad_seq = laid_out("r1", 0, [orjson.dumps(chunks[0])], None).replace(b'"seq":0', b'"seq":"x"')
    assert read_tokens(bad_seq) is None


def test_the_native_stream_relays_the_lines_as_it_would_have_encoded_them() -> None:
    chunks = [chunk(" a"), chunk(' "b"\n'), chunk(" <é>")]
    tokens = read_tokens(laid_out("r1", 0, [orjson.dumps(c) for c in chunks], None))
    assert tokens is not None
    shape, ndjson = OllamaChunks("chat", "m"), NdjsonEncoder()
    encoded = b"".join(ndjson.encode(f) for c in tokens.chunks for f in shape.chunk(c))
    assert shape.passthrough(tokens, ndjson) == encoded
    # Only NDJSON, and only a batch that came with its lines.
    assert shape.passthrough(tokens, SseEncoder()) is None
    assert shape.passthrough(Tokens(request_id="r1", seq=0, chunks=chunks), ndjson) is None
