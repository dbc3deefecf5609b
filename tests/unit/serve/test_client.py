"""ModelClient against a tiny local HTTP server on 127.0.0.1 that fails on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edray.serve.client import ClientConfig, Failure, ModelCallError, ModelClient, Result, user_message


class FlakyServer:
    """Answers /v1/chat/completions following a script of actions, one per request, then ``ok``.

    Actions: ``ok``, ``503``, ``429``, ``500``, ``400``, ``slow`` (sleeps past the client timeout),
    ``hold`` (sleeps 0.2 s then answers, to measure concurrency).
    """

    def __init__(self) -> None:
        self.script: list[str] = []
        self.default = "ok"
        self.lock = threading.Lock()
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.calls += 1
                    server.bodies.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    action = server.script.pop(0) if server.script else server.default
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if action == "slow":
                        time.sleep(1.0)
                    if action == "hold":
                        time.sleep(0.2)
                    if action in ("ok", "hold", "slow"):
                        text = body["messages"][-1]["content"]
                        text = text if isinstance(text, str) else "image"
                        payload = {
                            "id": "x",
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": f"echo {text}"},
                                    "logprobs": {"content": [{"token": "echo", "logprob": -0.5, "top_logprobs": [{"token": "echo", "logprob": -0.5}, {"token": "no", "logprob": -1.5}]}]},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
                        }
                        self._send(200, payload)
                    else:
                        status = int(action)
                        self._send(status, {"error": {"message": f"scripted {status}", "type": "x", "param": None, "code": None}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[FlakyServer]:
    s = FlakyServer()
    yield s
    s.close()


def client_for(server: FlakyServer, **kw) -> ModelClient:
    cfg = {"base_url": server.url, "model": "m", "max_retries": 3, "backoff_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}
    cfg.update(kw)
    return ModelClient(ClientConfig(**cfg), api_key="k")


def msgs(text: str = "hi") -> list[dict]:
    return [{"role": "user", "content": text}]


def test_retries_5xx_and_429_then_succeeds(server):
    server.script = ["503", "429", "500"]
    client = client_for(server)
    [out] = client.chat_many([{"messages": msgs()}], progress=False)
    assert isinstance(out, Result) and out.text == "echo hi"
    assert server.calls == 4
    assert client.stats.retries == 3 and client.stats.requests == 4 and client.stats.failures == 0
    assert client.stats.prompt_tokens == 7 and client.stats.completion_tokens == 2
    assert out.logprobs[0].token == "echo" and out.top_logprobs(0) == {"echo": -0.5, "no": -1.5}


def test_retries_timeouts(server):
    server.script = ["slow", "slow"]
    client = client_for(server, timeout_s=0.3)
    [out] = client.chat_many([{"messages": msgs()}], progress=False)
    assert isinstance(out, Result)
    assert client.stats.retries == 2


def test_exhausted_retries_raise_model_call_error(server):
    server.default = "503"
    client = client_for(server, max_retries=2)

    import asyncio

    with pytest.raises(ModelCallError) as info:
        asyncio.run(client.chat(msgs()))
    assert info.value.attempts == 3 and info.value.status == 503 and "scripted 503" in info.value.reason


def test_client_error_is_not_retried_and_recorded_in_chat_many(server):
    server.script = ["ok", "400"]
    client = client_for(server, max_concurrency=1)
    out = client.chat_many([{"messages": msgs("a")}, {"messages": msgs("b")}, {"messages": msgs("c")}], progress=False)
    assert isinstance(out[0], Result) and isinstance(out[2], Result)
    assert isinstance(out[1], Failure)
    assert out[1].index == 1 and out[1].status == 400 and out[1].attempts == 1 and "scripted 400" in out[1].reason
    assert client.stats.failures == 1 and server.calls == 3


def test_connection_errors_are_failures_not_raises():
    client = ModelClient(
        ClientConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.01), api_key=""
    )
    [out] = client.chat_many([{"messages": msgs()}], progress=False)
    assert isinstance(out, Failure) and out.attempts == 2 and "connection error" in out.reason


def test_malformed_request_mapping_is_a_failure(server):
    client = client_for(server)
    out = client.chat_many([{"prompt": "x"}, {"messages": msgs(), "temprature": 0.1}], progress=False)
    assert all(isinstance(o, Failure) for o in out)
    assert "messages" in out[0].reason and "temprature" in out[1].reason
    assert server.calls == 0


def test_cache_hit_on_repeat_across_clients(server, tmp_path):
    image = b"\x89PNG fake bytes"
    reqs = [{"messages": [user_message("q", [image])], "max_tokens": 4}, {"messages": msgs("t"), "seed": 3, "temperature": 1.0}]
    first = client_for(server, cache_dir=str(tmp_path))
    out1 = first.chat_many(reqs, progress=False)
    assert server.calls == 2 and not any(o.cached for o in out1)
    # A fresh client with the same config (a resumed stage) pays nothing.
    second = client_for(server, cache_dir=str(tmp_path))
    out2 = second.chat_many(reqs, progress=False)
    assert server.calls == 2
    assert all(isinstance(o, Result) and o.cached for o in out2)
    assert [o.text for o in out2] == [o.text for o in out1]
    assert second.stats.cache_hits == 2 and second.stats.requests == 0
    # Any change of a sampling field is a different request.
    second.chat_many([{"messages": msgs("t"), "seed": 4, "temperature": 1.0}], progress=False)
    assert server.calls == 3


def test_sampled_requests_without_seed_are_not_cached(server, tmp_path):
    client = client_for(server, cache_dir=str(tmp_path))
    client.chat_many([{"messages": msgs(), "temperature": 0.7}] * 2, progress=False)
    assert server.calls == 2 and client.stats.cache_hits == 0


def test_concurrency_is_bounded(server):
    server.default = "hold"
    client = client_for(server, max_concurrency=3)
    out = client.chat_many([{"messages": msgs(str(i))} for i in range(12)], progress=False)
    assert all(isinstance(o, Result) for o in out)
    assert [o.text for o in out] == [f"echo {i}" for i in range(12)]
    assert 2 <= server.max_in_flight <= 3


def test_chat_many_works_inside_a_running_event_loop(server):
    import asyncio

    client = client_for(server)

    async def inside() -> list:
        return client.chat_many([{"messages": msgs("x")}], progress=False)

    [out] = asyncio.run(inside())
    assert isinstance(out, Result) and out.text == "echo x"


def test_api_key_sent_as_bearer(server, monkeypatch):
    monkeypatch.setenv("EDRAY_TEST_CLIENT_KEY", "s3cret")
    client = ModelClient(ClientConfig(base_url=server.url, model="m", api_key_env="EDRAY_TEST_CLIENT_KEY"))
    client.chat_many([{"messages": msgs()}], progress=False)
    assert server.auth == ["Bearer s3cret"]


# --- in-process engines behind the same client --------------------------------------------------------


class ScriptedEngine:
    """An engine that fails on a script of statuses, then answers; records what it was asked."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list = []

    def model_ids(self) -> list[str]:
        return ["m"]

    async def generate(self, request):  # noqa: ANN001, ANN201 - the engine contract
        from edray.serve.engine import ChatResult, EngineError, TokenLogprob

        self.requests.append(request)
        if self.script:
            raise EngineError(f"scripted {self.script[0]}", self.script.pop(0))
        text = request.messages[-1]["content"]
        return ChatResult(text=f"echo {text}", prompt_tokens=3, completion_tokens=2,
                          logprobs=[TokenLogprob("echo", -0.5, [("echo", -0.5)])] if request.logprobs else None)

    async def stream(self, request):  # noqa: ANN001, ANN201
        yield (await self.generate(request)).text


def engine_client(engine: ScriptedEngine, tmp_path=None, **kw) -> ModelClient:
    cfg = {"model": "m", "max_retries": 3, "backoff_s": 0.0, "cache_dir": str(tmp_path) if tmp_path else None, **kw}
    return ModelClient(ClientConfig(**cfg), engine=engine)


def test_engine_transport_shares_the_retry_policy(tmp_path):
    engine = ScriptedEngine([503, 429])
    client = engine_client(engine, tmp_path)
    [out] = client.chat_many([{"messages": msgs(), "logprobs": True, "top_logprobs": 1}], progress=False)
    assert isinstance(out, Result) and out.text == "echo hi" and out.top_logprobs(0) == {"echo": -0.5}
    assert len(engine.requests) == 3 and client.stats.retries == 2 and client.stats.prompt_tokens == 3
    # A 400 is the request's fault: no retry, a Failure with its status.
    bad = ScriptedEngine([400])
    [fail] = engine_client(bad).chat_many([{"messages": msgs()}], progress=False)
    assert isinstance(fail, Failure) and fail.status == 400 and fail.attempts == 1 and len(bad.requests) == 1
    # The server's parser runs first: an invalid request never reaches the engine.
    [invalid] = engine_client(bad).chat_many([{"messages": [{"role": "robot", "content": "x"}]}], progress=False)
    assert isinstance(invalid, Failure) and invalid.status == 400 and "role" in invalid.reason and len(bad.requests) == 1


def test_engine_answers_are_cached_and_forgotten(tmp_path):
    engine = ScriptedEngine()
    req = {"messages": msgs("q")}
    engine_client(engine, tmp_path).chat_many([req], progress=False)
    again = engine_client(engine, tmp_path)
    [out] = again.chat_many([req], progress=False)
    assert out.cached and len(engine.requests) == 1 and again.stats.cache_hits == 1
    again.forget(req)
    [fresh] = engine_client(engine, tmp_path).chat_many([req], progress=False)
    assert not fresh.cached and len(engine.requests) == 2


def test_engine_by_import_path_and_extra_body(tmp_path):
    client = ModelClient(ClientConfig(model="teacher", engine="edray.world.teacher:WorldTeacher",
                                      engine_options={"seed": 3}))
    assert client.engine.model_ids() == ["teacher"] and client.engine.config.seed == 3
    body = client.payload(msgs(), extra_body={"structured_outputs": {"choice": ["A", "B"]}, "max_tokens": 9})
    assert body["structured_outputs"] == {"choice": ["A", "B"]} and body["max_tokens"] == 256  # extras never override


def test_probes_tell_what_an_endpoint_offers(server):
    import asyncio

    # The flaky server ignores structured outputs and prompt_logprobs and answers "echo ...": nothing offered.
    client = client_for(server)
    assert not any(asyncio.run(client.supports(f)) for f in ("choice", "likelihood", "json_schema"))
    assert client.stats.probes == 3 and client.stats.requests == 0  # probes are counted apart
    asyncio.run(client.supports("choice"))
    assert client.stats.probes == 3  # probed once per client


def test_prompt_logprobs_are_parsed():
    from edray.serve.replies import parse_response

    data = {"choices": [{"message": {"content": ""}, "finish_reason": "length"}],
            "prompt_logprobs": [None, {"12": {"logprob": -1.5, "rank": 1, "decoded_token": "A"}}]}
    assert parse_response(data, cached=False).prompt_logprobs == [("", None), ("12", -1.5)]
