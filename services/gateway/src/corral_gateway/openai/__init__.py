"""The OpenAI-compatible surface (`/v1`), as Ollama serves it.

The reference is Ollama's own compatibility layer (`openai/openai.go`, `middleware/openai.go` in
ollama/ollama): the same request mapping onto the native API, the same answer shapes. The modules
here are pure translation, with no I/O:

- `requests`: the OpenAI request bodies (pydantic), validated with Ollama's error texts, and their
  translation to native `/api/chat`, `/api/generate` and `/api/embed` bodies, Corral's extension
  fields included.
- `responses`: native answers and stream chunks as OpenAI objects (completions, chunks, embeddings,
  models), with one small stateful class per stream.
- `errors`: Corral's failures in OpenAI's error shape, as a JSON answer or an SSE `error` event.
- `sse`: Server-Sent Events framing: data events, `[DONE]`, and comment lines for queue feedback and
  heartbeats.
"""
