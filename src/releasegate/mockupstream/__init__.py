"""MOCK OpenAI-compatible model server: a stand-in for vLLM in the demo, tests and benchmarks.

THIS IS NOT A MODEL. Every answer is a deterministic echo such as
``"[mock atlas-8b-v1] you said: hello there"``; token counts are whitespace-separated words.

It is a plain ASGI callable (no framework on the hot path) so benchmarks can push tens of
thousands of requests through it. Endpoints:

* ``GET  /v1/models``, ``GET /v1/models/{id}``
* ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/responses``
  in OpenAI's response shapes; ``"stream": true`` gives OpenAI's server-sent events
  (``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``; a final ``usage`` chunk when
  ``stream_options.include_usage`` is true; the Responses API event stream for
  ``/v1/responses``), with ``chunk_delay`` seconds before every content chunk.
* Control: ``GET /_mock/requests[?request_id=X&path=/v1/...]``, ``POST /_mock/reset``,
  ``GET /_mock/health``. Never authenticated, never recorded.

Fault injection by request header (see :data:`FAULT_HEADERS`):

* ``x-mock-status: 500``      answer with that status and an OpenAI error body
* ``x-mock-delay: 2.5``       sleep that many seconds before answering (upstream hang)
* ``x-mock-garbage: 1``       answer 200 with bytes that are not JSON
* ``x-mock-chunk-delay: 0.2`` override ``chunk_delay`` for this request
* ``x-mock-chunks: N``        make the completion exactly N words = N streamed content chunks
* ``x-mock-abort-after: K``   streaming only: drop the connection after K content chunks

Every ``/v1`` request is recorded *before* it is answered (method, path, query, headers
including ``authorization``, ``x-request-id``, parsed JSON body) in a bounded in-memory list
(``app.state.requests``) and, with ``record_file=``, appended as one flushed JSON line.

Run it::

    python -m releasegate.mockupstream --host 127.0.0.1 --port 8001 \\
        [--chunk-delay 0.05] [--api-key sk-upstream] [--record-file upstream.jsonl]
"""

from releasegate.mockupstream.app import DEFAULT_MODELS, MockUpstream, create_mock_upstream
from releasegate.mockupstream.cli import BANNER as BANNER
from releasegate.mockupstream.cli import main
from releasegate.mockupstream.faults import FAULT_HEADERS
from releasegate.mockupstream.faults import GARBAGE_BODY as GARBAGE_BODY
from releasegate.mockupstream.recording import MockState

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_HEADERS",
    "MockState",
    "MockUpstream",
    "create_mock_upstream",
    "main",
]
