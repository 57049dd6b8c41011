"""Bodies are judged exactly as Ollama's Go decoder judges them."""

from __future__ import annotations

import pytest

from corral_gateway.validation import OllamaRequestError, decode_body


def rejects(raw: bytes, kind: str = "chat") -> OllamaRequestError:
    with pytest.raises(OllamaRequestError) as info:
        decode_body(raw, kind)
    return info.value


@pytest.mark.parametrize("raw", [b"", b"   \n"])
def test_missing_body(raw: bytes) -> None:
    error = rejects(raw)
    assert (error.status, error.message) == (400, "missing request body")


def test_malformed_json() -> None:
    error = rejects(b"xyz")
    assert error.status == 400
    assert error.message == "invalid character 'x' looking for beginning of value"
    assert rejects(b'{"model": "m"').message == "unexpected EOF"


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (
            b'{"model":"m","stream":"yes"}',
            "chat",
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            b'{"model":3}',
            "generate",
            "json: cannot unmarshal number into Go struct field GenerateRequest.model "
            "of type string",
        ),
        (
            b'{"model":"m","messages":{}}',
            "chat",
            "json: cannot unmarshal object into Go struct field ChatRequest.messages "
            "of type []api.Message",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":5}]}',
            "chat",
            "json: cannot unmarshal number into Go struct field ChatRequest.messages.content "
            "of type string",
        ),
        (
            b'{"model":"m","options":[]}',
            "chat",
            "json: cannot unmarshal array into Go struct field ChatRequest.options "
            "of type map[string]interface {}",
        ),
        (
            b'{"model":"m","context":[1.5]}',
            "generate",
            # Go quotes the number when ParseInt refuses it.
            "json: cannot unmarshal number 1.5 into Go struct field GenerateRequest.context "
            "of type int",
        ),
        (b"[1]", "chat", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
    ],
)
def test_wrong_types(raw: bytes, kind: str, message: str) -> None:
    error = rejects(raw, kind)
    assert (error.status, error.message) == (400, message)


@pytest.mark.parametrize("kind", ["chat", "generate", "show", "embed"])
def test_a_null_body_is_an_empty_request(kind: str) -> None:
    # Go decodes a bare `null` into the request struct without error (a no-op): the handler
    # then answers for an empty request, never "cannot unmarshal object".
    assert decode_body(b" null\n", kind) == {}


def test_nulls_are_zero_values() -> None:
    body = decode_body(b'{"model":"m","stream":null,"options":null}', "chat")
    assert body["stream"] is None


def test_lone_surrogate_is_rejected() -> None:
    error = rejects(b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}')
    assert error.status == 400
    assert "surrogate" in error.message


def test_invalid_utf8_is_rejected_as_such_not_as_a_surrogate() -> None:
    for raw in (b'{"model":"\xff\xfe"}', b'{"model":"\xed\xa0\x80"}'):
        error = rejects(raw)
        assert (error.status, error.message) == (400, "invalid request body: not valid UTF-8")


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('"keep_alive":"300"', 'time: missing unit in duration "300"'),
        ('"keep_alive":"soon"', 'time: invalid duration "soon"'),
        (
            '"think":"very"',
            'invalid think value: "very" (must be "high", "medium", "low", "max", true, or false)',
        ),
        (
            '"think":3',
            'think must be a boolean or string ("high", "medium", "low", "max", true, or false)',
        ),
        ('"keep_alive":true', "Unsupported type: 'bool'"),
        ('"keep_alive":[]', "Unsupported type: '[]interface {}'"),
        ('"keep_alive":{}', "Unsupported type: 'map[string]interface {}'"),
        ('"top_logprobs":21', "top_logprobs must be between 0 and 20"),
    ],
)
def test_value_rules(field: str, message: str) -> None:
    error = rejects(('{"model":"m",' + field + "}").encode())
    assert (error.status, error.message) == (400, message)


@pytest.mark.parametrize("keep_alive", ['"5m"', '"1h30m"', '"0"', "0", "-1", '"-1s"', "2.5"])
def test_keep_alive_accepts_what_ollama_accepts(keep_alive: str) -> None:
    decode_body(('{"model":"m","keep_alive":' + keep_alive + "}").encode(), "generate")


def test_raw_mode_conflicts() -> None:
    error = rejects(b'{"model":"m","raw":true,"system":"s"}', "generate")
    assert error.message == "raw mode does not support template, system, or context"


def test_unknown_fields_are_ignored() -> None:
    assert decode_body(b'{"model":"m","whatever":[1,2]}', "chat")["whatever"] == [1, 2]


GO_FIELD = "json: cannot unmarshal {} into Go struct field {} of type {}"


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        # Shapes of `messages` and what is inside them.
        (
            b'{"model":"m","messages":[null]}',
            "chat",
            GO_FIELD.format("null", "ChatRequest.messages", "api.Message"),
        ),
        (
            b'{"model":"m","messages":[1]}',
            "chat",
            GO_FIELD.format("number", "ChatRequest.messages", "api.Message"),
        ),
        (
            b'{"model":"m","messages":"x"}',
            "chat",
            GO_FIELD.format("string", "ChatRequest.messages", "[]api.Message"),
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":["a"]}]}',
            "chat",
            GO_FIELD.format("array", "ChatRequest.messages.content", "string"),
        ),
        (
            b'{"model":"m","messages":[{"role":{},"content":"a"}]}',
            "chat",
            GO_FIELD.format("object", "ChatRequest.messages.role", "string"),
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":"a","images":"aGk="}]}',
            "chat",
            GO_FIELD.format("string", "ChatRequest.messages.images", "[]api.ImageData"),
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":"a","images":[1]}]}',
            "chat",
            GO_FIELD.format("number", "ChatRequest.messages.images", "api.ImageData"),
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":"a","images":["data:x"]}]}',
            "chat",
            "illegal base64 data at input byte 4",
        ),
        (b'{"model":"m","images":["abc"]}', "generate", "illegal base64 data at input byte 0"),
        (b'{"model":"m","images":["aGk=aGk="]}', "generate", "illegal base64 data at input byte 4"),
        (b'{"model":"m","images":["a==="]}', "generate", "illegal base64 data at input byte 1"),
        (
            b'{"model":"m","messages":[{"role":"assistant","tool_calls":[1]}]}',
            "chat",
            GO_FIELD.format("number", "ChatRequest.messages.tool_calls", "api.ToolCall"),
        ),
        (
            b'{"model":"m","messages":[{"role":"assistant",'
            b'"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}]}',
            "chat",
            GO_FIELD.format(
                "string",
                "ChatRequest.messages.tool_calls.function.arguments",
                "api.ToolCallFunctionArguments",
            ),
        ),
        # Tools, options, format.
        (
            b'{"model":"m","tools":{}}',
            "chat",
            GO_FIELD.format("object", "ChatRequest.tools", "api.Tools"),
        ),
        (
            b'{"model":"m","tools":["t"]}',
            "chat",
            GO_FIELD.format("string", "ChatRequest.tools", "api.Tool"),
        ),
        (
            b'{"model":"m","tools":[{"type":"function","function":{"name":7}}]}',
            "chat",
            GO_FIELD.format("number", "ChatRequest.tools.function.name", "string"),
        ),
        (
            b'{"model":"m","options":"hot"}',
            "generate",
            GO_FIELD.format("string", "GenerateRequest.options", "map[string]interface {}"),
        ),
        (
            b'{"model":"m","format":5}',
            "chat",
            'invalid format: "5"; expected "json" or a valid JSON Schema object',
        ),
        (
            b'{"model":"m","format":"xml"}',
            "generate",
            'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object',
        ),
        # Numbers: Go names the number and the field it could not hold it in.
        (
            b'{"model":"m","top_logprobs":1e999}',
            "chat",
            GO_FIELD.format("number 1e999", "ChatRequest.top_logprobs", "int"),
        ),
        (
            b'{"model":"m","options":{"temperature":-1e999}}',
            "chat",
            GO_FIELD.format("number -1e999", "ChatRequest.options", "float64"),
        ),
        (
            b'{"model":"m","keep_alive":1E400}',
            "generate",
            GO_FIELD.format("number 1E400", "GenerateRequest.keep_alive", "float64"),
        ),
        (
            b'{"model":"m","whatever":[1e999]}',
            "chat",
            GO_FIELD.format("number 1e999", "ChatRequest.whatever", "float64"),
        ),
        (
            b'{"model":1e999}',
            "chat",
            GO_FIELD.format("number", "ChatRequest.model", "string"),
        ),
        (b"1e999", "chat", "json: cannot unmarshal number into Go value of type api.ChatRequest"),
        (
            b'{"model":"m","context":[99999999999999999999]}',
            "generate",
            GO_FIELD.format("number 1e+20", "GenerateRequest.context", "int"),
        ),
        (
            b'{"model":"m","top_logprobs":9223372036854775808}',
            "chat",
            GO_FIELD.format("number 9223372036854775808", "ChatRequest.top_logprobs", "int"),
        ),
    ],
)
def test_wrong_shapes_get_go_decoder_texts(raw: bytes, kind: str, message: str) -> None:
    error = rejects(raw, kind)
    assert (error.status, error.message) == (400, message)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","messages":[{"role":"user","content":null,"images":["aGk=","aG\\nk="]}]}',
        b'{"model":"m","format":"json"}',
        b'{"model":"m","format":""}',
        b'{"model":"m","format":{"type":"object"}}',
        b'{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":'
        b'{"type":"object","properties":{"a":{"type":"string"}}}}}]}',
        b'{"model":"m","options":{"temperature":1e300,"seed":99999999999999999999}}',
    ],
)
def test_what_ollama_accepts_passes(raw: bytes) -> None:
    decode_body(raw, "chat")


def test_fields_a_request_type_lacks_are_not_judged() -> None:
    # Go ignores fields its struct does not have: a pull with `think` is still a pull.
    decode_body(b'{"model":"m","think":"very","format":5}', "pull")


@pytest.mark.parametrize("depth", [65, 254, 255, 1024, 1025, 100_000])
def test_nesting_past_the_limit_is_refused_at_once(depth: int) -> None:
    raw = b'{"model":"m","options":{"x":' + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}}"
    error = rejects(raw)
    assert error.status == 400
    assert error.message.startswith("exceeded max depth")
    assert "64" in error.message


def test_nesting_at_the_limit_passes() -> None:
    raw = b'{"model":"m","options":{"x":' + b"[" * 62 + b"]" * 62 + b"}}"
    decode_body(raw, "chat")


def test_echoed_values_are_clipped() -> None:
    error = rejects(('{"model":"m","keep_alive":"' + "x" * 100_000 + '"}').encode())
    assert len(error.message) < 200
