"""Probes of what an OpenAI-compatible endpoint offers beyond the basics (:meth:`ModelClient.supports`).

Each probe asks for something a model would not write unconstrained (the choice ``Q``/``Z`` in reply to
"say hello", an enum value ``zqx``), so a server that silently ignores the field fails it.
"""

from __future__ import annotations

import json
from typing import Any

FEATURES = ("choice", "likelihood", "json_schema")


async def probe(client: Any, feature: str) -> bool:
    """Whether ``client``'s endpoint offers ``feature`` (one or two requests, never cached).

    Raises:
        ValueError: an unknown feature.
    """
    from edray.serve.client import ModelCallError

    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")
    hello = [{"role": "user", "content": "Say hello."}]
    try:
        if feature == "choice":
            r = await client.chat(hello, max_tokens=2, logprobs=True, top_logprobs=2, use_cache=False,
                                  extra_body={"structured_outputs": {"choice": ["Q", "Z"]}})
            return r.text.strip() in ("Q", "Z") and bool(r.logprobs)
        if feature == "likelihood":
            r = await client.chat([*hello, {"role": "assistant", "content": "Hello"}], max_tokens=1, use_cache=False,
                                  extra_body={"add_generation_prompt": False, "continue_final_message": True,
                                              "prompt_logprobs": 0})
            return len(r.prompt_logprobs) > 1 and r.prompt_logprobs[-1][1] is not None
        schema = {"type": "object", "properties": {"probe": {"type": "string", "enum": ["zqx"]}},
                  "required": ["probe"], "additionalProperties": False}
        r = await client.chat(hello, max_tokens=48, use_cache=False,
                              response_format={"type": "json_schema",
                                               "json_schema": {"name": "probe", "schema": schema, "strict": True}})
        return json.loads(r.text) == {"probe": "zqx"}
    except (ModelCallError, ValueError, TypeError):
        return False
