"""Call an in-process engine with the model client's batch interface.

:func:`EngineClient` returns a :class:`~edray.serve.client.ModelClient` whose transport is an
:class:`~edray.serve.engine.Engine` living in the same process (the skills world's teacher, a
transformers student): the same request mappings, ``Result``/``Failure`` answers, retry policy,
response cache and accounting as a served model, with the request passing through the server's own
parser, so what the engine sees is what it would see over HTTP.
"""

from __future__ import annotations

from edray.serve.client import ModelClient
from edray.serve.config import ClientConfig
from edray.serve.engine import Engine


def EngineClient(  # noqa: N802 - kept as the name callers know; it builds a ModelClient
    engine: Engine,
    model: str,
    max_retries: int = 4,
    timeout_s: float = 120.0,
    max_concurrency: int = 8,
    backoff_s: float = 0.05,
    cache_dir: str | None = None,
) -> ModelClient:
    """A model client over an in-process engine.

    Args:
        engine: the engine to call.
        model: default model name of requests that name none.
        max_retries: retries of a retryable failure after the first attempt.
        timeout_s: per-attempt timeout.
        max_concurrency: requests in flight at once.
        backoff_s: first retry delay (short: an in-process engine has no rate limit to wait out).
        cache_dir: folder of the response cache, or ``None`` for none.
    """
    config = ClientConfig(
        model=model, max_retries=max_retries, timeout_s=timeout_s, max_concurrency=max_concurrency,
        backoff_s=backoff_s, cache_dir=cache_dir,
    )
    return ModelClient(config, engine=engine)
