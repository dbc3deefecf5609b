"""Re-asking unreadable teacher replies through the real model client and its cache (an engine in process)."""

from __future__ import annotations

import asyncio

from edray.diagnose.queries import _ask_until_readable
from edray.serve.client import ModelClient
from edray.serve.config import ClientConfig
from edray.serve.engine import ChatResult


class Moody:
    """Answers garbage the first ``bad`` times it sees a question, then the skill phrase."""

    def __init__(self, bad: dict[str, int]) -> None:
        self.bad = dict(bad)
        self.calls = 0

    def model_ids(self) -> list[str]:
        return ["t"]

    async def generate(self, request):  # noqa: ANN001, ANN201 - the engine contract
        self.calls += 1
        q = request.messages[-1]["content"]
        if self.bad.get(q, 0) > 0:
            self.bad[q] -= 1
            return ChatResult(text="I am not sure.")
        return ChatResult(text="counting objects")

    async def stream(self, request):  # noqa: ANN001, ANN201
        yield (await self.generate(request)).text


def _ask(engine: Moody, cache: str) -> list:
    client = ModelClient(ClientConfig(model="t", cache_dir=cache), engine=engine)
    payloads = [{"messages": [{"role": "user", "content": q}], "max_tokens": 8} for q in ("q1", "q2")]
    readers = [lambda r: r.text if r.text == "counting objects" else None] * 2
    return asyncio.run(_ask_until_readable(client, payloads, readers, retries=2))


def test_reasks_until_readable_and_keeps_only_what_is_usable(tmp_path) -> None:
    engine = Moody({"q1": 1, "q2": 99})
    out = _ask(engine, str(tmp_path))
    assert [p for _, p in out] == ["counting objects", None]
    assert engine.calls == 2 + 1 + 1 + 1  # both, then q1 and q2 re-asked, then q2 again
    # A re-run replays q1's recovery from the cache and asks again only for q2, all three times.
    engine.calls = 0
    engine.bad = {"q2": 99}
    _ask(engine, str(tmp_path))
    assert engine.calls == 3
