"""The transformers engine: any HF image-text-to-text folder, with peft LoRA adapters by name.

Runs wherever torch runs (no vLLM needed). Weights load from safetensors only; code shipped in the
model folder runs only when the config sets ``trust_remote_code``. Requests run one at a time on a
dedicated thread (generation holds the model's adapter selection), so the event loop stays free to
accept and stream; :meth:`TransformersEngine.generate_batch` answers many greedy requests per
``generate`` call for offline evaluation.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edray.schemas import IMAGE_PLACEHOLDER
from edray.serve.engine import ChatRequest, ChatResult, EngineError, TokenLogprob

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _split_content(text: str) -> list[dict[str, str]]:
    """``"a<image>b"`` → chat-template parts ``[text a, image, text b]``."""
    parts: list[dict[str, str]] = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


class TransformersEngine:
    """An :class:`~edray.serve.engine.Engine` backed by ``AutoModelForImageTextToText``.

    Args:
        name: the base model's served name.
        path: the HF model folder.
        adapters: served adapter name → peft adapter folder.
        trust_remote_code: allow code from the model folder.
        dtype: weights dtype.
        max_total_tokens: largest prompt + completion length a request may reach.
        torch_threads: torch intra-op threads (0 leaves torch's default).

    Raises:
        EngineError: the folder is missing or holds no safetensors weights (status 500).
    """

    def __init__(
        self,
        name: str,
        path: str,
        adapters: dict[str, str] | None = None,
        trust_remote_code: bool = False,
        dtype: str = "float32",
        max_total_tokens: int = 8192,
        torch_threads: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(path)
        if not folder.is_dir():
            raise EngineError(f"model {name!r}: folder {path} does not exist", status=500)
        if not any(folder.glob("*.safetensors")):
            raise EngineError(f"model {name!r}: {path} holds no .safetensors weights (only safetensors load)", 500)
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.name = name
        self.adapters = dict(adapters or {})
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            dtype=getattr(torch, _DTYPES[dtype]),
        )
        model.eval()
        if self.adapters:
            from peft import PeftModel

            items = list(self.adapters.items())
            for adapter_name, adapter_path in items:
                if not (Path(adapter_path) / "adapter_config.json").is_file():
                    raise EngineError(f"adapter {adapter_name!r}: {adapter_path} is not a peft adapter folder", 500)
            first_name, first_path = items[0]
            model = PeftModel.from_pretrained(model, first_path, adapter_name=first_name, is_trainable=False)
            for adapter_name, adapter_path in items[1:]:
                model.load_adapter(adapter_path, adapter_name=adapter_name, is_trainable=False)
            model.eval()
        self.model = model
        text_config = getattr(model.config, "text_config", model.config)
        context = getattr(text_config, "max_position_embeddings", None) or max_total_tokens
        self.max_total_tokens = min(int(context), int(max_total_tokens))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")

    def model_ids(self) -> list[str]:
        """The base model's name, then each adapter's."""
        return [self.name, *self.adapters]

    # --- request preparation --------------------------------------------------------------------

    def _inputs(self, request: ChatRequest) -> dict[str, Any]:
        prompt, images = self._prompt_and_images(request)
        kwargs: dict[str, Any] = {"text": prompt, "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        inputs = dict(self.processor(**kwargs))
        error = self._length_error(int(inputs["input_ids"].shape[1]), request.max_tokens)
        if error is not None:
            raise error
        return self._on_device(inputs)

    def _length_error(self, n_prompt: int, max_tokens: int) -> EngineError | None:
        """The refusal of a prompt of ``n_prompt`` tokens with ``max_tokens`` to generate, if it is too long."""
        if n_prompt + max_tokens <= self.max_total_tokens:
            return None
        return EngineError(
            f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds this model's limit of "
            f"{self.max_total_tokens} tokens",
            status=400,
        )

    def _prompt_and_images(self, request: ChatRequest) -> tuple[str, list[Any]]:
        """The request's chat-templated prompt and decoded images, or the :class:`EngineError` refusing it."""
        from PIL import Image

        if request.model not in self.model_ids():
            raise EngineError(f"model {request.model!r} is not served by this engine", status=404)
        if request.response_format is not None:
            raise EngineError(
                "response_format: the transformers engine does not constrain output; serve the model with "
                "engine: vllm for JSON-schema output",
                status=400,
            )
        n_placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in request.messages)
        if n_placeholders != len(request.images):
            raise EngineError(f"{n_placeholders} image placeholders but {len(request.images)} images", status=400)
        messages = [{"role": m["role"], "content": _split_content(m["content"])} for m in request.messages]
        try:
            prompt = self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not request.continue_final_message,
                continue_final_message=request.continue_final_message,
            )
        except Exception as exc:  # a template may refuse a role order (e.g. two user turns)
            raise EngineError(f"messages: the model's chat template refused them ({exc})", status=400) from None
        images = []
        for i, data in enumerate(request.images):
            try:
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            except Exception as exc:
                raise EngineError(f"images[{i}]: not a readable image ({type(exc).__name__})", status=400) from None
        return prompt, images

    # --- device ---------------------------------------------------------------------------------

    def to_device(self, device: str) -> "TransformersEngine":
        """Move the model to ``device`` (``cuda``, ``cuda:1``, ``cpu``); requests follow it."""
        self.model.to(device)
        return self

    def _on_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        device = self.model.device
        if device.type == "cpu":
            return inputs
        dtype = self.model.dtype
        return {k: (v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)) if hasattr(v, "to") else v
                for k, v in inputs.items()}

    def _generate_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        import torch

        kwargs: dict[str, Any] = {"max_new_tokens": request.max_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_k=0, top_p=1.0)
            # Requests run one at a time on the engine thread, so seeding the global RNG is private.
            torch.manual_seed(request.seed if request.seed is not None else torch.seed())
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if request.stop:
            kwargs.update(stop_strings=request.stop, tokenizer=self.tokenizer)
        return kwargs

    def _select_adapter(self, model_name: str) -> Any:
        """Context manager that runs the base model or one adapter."""
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if model_name == self.name:
            return self.model.disable_adapter()
        self.model.set_adapter(model_name)
        return contextlib.nullcontext()

    # --- generation -----------------------------------------------------------------------------

    def _generate_sync(self, request: ChatRequest) -> ChatResult:
        import torch

        inputs = self._inputs(request)
        if request.prompt_logprobs is not None:
            return self._score_prompt(inputs, request)
        n_prompt = int(inputs["input_ids"].shape[1])
        gen_kwargs = self._generate_kwargs(request)
        with torch.inference_mode(), self._select_adapter(request.model):
            out = self.model.generate(
                **inputs, **gen_kwargs, return_dict_in_generate=True, output_logits=request.logprobs
            )
        new_ids = out.sequences[0, n_prompt:].tolist()
        eos = self._eos_ids()
        finish = "length"
        if new_ids and new_ids[-1] in eos:
            new_ids = new_ids[:-1]
            finish = "stop"
        elif len(new_ids) < request.max_tokens:
            finish = "stop"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        if request.stop:
            for s in request.stop:
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
        logprobs = None
        if request.logprobs:
            logprobs = []
            for step, token_id in enumerate(new_ids):
                lp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                top: list[tuple[str, float]] = []
                if request.top_logprobs:
                    vals, idx = lp.topk(request.top_logprobs)
                    top = [(self._token_text(int(i)), float(v)) for v, i in zip(vals, idx)]
                logprobs.append(TokenLogprob(self._token_text(token_id), float(lp[token_id]), top))
        return ChatResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=n_prompt,
            completion_tokens=len(out.sequences[0]) - n_prompt,
            logprobs=logprobs,
        )

    def _score_prompt(self, inputs: dict[str, Any], request: ChatRequest) -> ChatResult:
        """The log-probability of every prompt token (one forward pass, nothing generated): how a client
        scores a given reply as the continuation of a prompt (``continue_final_message`` + ``prompt_logprobs``)."""
        import torch

        with torch.inference_mode(), self._select_adapter(request.model):
            logits = self.model(**inputs).logits[0].float()
        ids = inputs["input_ids"][0]
        lps = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:].unsqueeze(1)).squeeze(1).tolist()
        scored: list[tuple[int, float | None]] = [(int(ids[0]), None)]
        scored += [(int(t), float(v)) for t, v in zip(ids[1:].tolist(), lps)]
        return ChatResult(text="", finish_reason="length", prompt_tokens=len(scored), completion_tokens=0,
                          prompt_logprobs=scored)

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return set()
        return set(ids) if isinstance(ids, (list, tuple)) else {int(ids)}

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    async def generate(self, request: ChatRequest) -> ChatResult:
        """Complete one request.

        Raises:
            EngineError: 400 for a request the model cannot take (too long, unsupported field),
                404 for a model name this engine does not serve.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._generate_sync, request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield text deltas as the model generates them.

        Raises:
            EngineError: as :meth:`generate`, before the first delta.
        """
        import torch
        from transformers import TextIteratorStreamer

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def work() -> None:
            try:
                inputs = self._inputs(request)
                gen_kwargs = self._generate_kwargs(request)
                streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

                def run() -> None:
                    with torch.inference_mode(), self._select_adapter(request.model):
                        self.model.generate(**inputs, **gen_kwargs, streamer=streamer)

                runner = threading.Thread(target=run, daemon=True)
                runner.start()
                for piece in streamer:
                    if piece:
                        loop.call_soon_threadsafe(queue.put_nowait, ("text", piece))
                runner.join()
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        future = loop.run_in_executor(self._executor, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                elif kind == "end":
                    break
        finally:
            await future

    # --- batched generation (offline evaluation) ------------------------------------------------

    async def generate_batch(self, requests: Sequence[ChatRequest], batch_size: int = 32) -> list[ChatResult | EngineError]:
        """Complete many requests, greedy ones ``batch_size`` at a time in one padded ``generate`` call.

        Offline evaluation answers thousands of prompts; one ``generate`` per prompt leaves most of the
        CPU idle. Greedy requests for the same model, token budget and stop strings share a batch
        (left-padded, so every row's reply starts at the same position); sampled requests and requests
        that ask for logprobs run one at a time, as :meth:`generate` runs them. A batch that fails as a
        whole is answered row by row, so a bad request fails alone.

        Args:
            requests: the requests, in any mix of models served by this engine.
            batch_size: rows per ``generate`` call.

        Returns:
            One :class:`ChatResult`, or the :class:`EngineError` refusing that request, per request, in order.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._generate_batch_sync, list(requests), batch_size)

    def _generate_batch_sync(self, requests: list[ChatRequest], batch_size: int) -> list[ChatResult | EngineError]:
        out: list[ChatResult | EngineError | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[tuple[int, str, list[Any]]]] = {}
        for i, request in enumerate(requests):
            if request.temperature > 0 or request.logprobs:
                out[i] = self._generate_one(request)
                continue
            try:
                prompt, images = self._prompt_and_images(request)
            except EngineError as exc:
                out[i] = exc
                continue
            key = (request.model, request.max_tokens, tuple(request.stop or ()))
            groups.setdefault(key, []).append((i, prompt, images))
        for rows in groups.values():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                try:
                    results = self._generate_chunk([requests[i] for i, _, _ in chunk], chunk)
                except Exception:  # noqa: BLE001 - one bad row must not fail its batch: answer row by row
                    results = [self._generate_one(requests[i]) for i, _, _ in chunk]
                for (i, _, _), result in zip(chunk, results):
                    out[i] = result
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def _generate_one(self, request: ChatRequest) -> ChatResult | EngineError:
        try:
            return self._generate_sync(request)
        except EngineError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one bad row (an image the processor refuses) fails alone
            return EngineError(f"{type(exc).__name__}: {exc}"[:500], 500)

    def _generate_chunk(
        self, requests: list[ChatRequest], rows: list[tuple[int, str, list[Any]]]
    ) -> list[ChatResult | EngineError]:
        """One padded ``generate`` over requests that share model, ``max_tokens`` and ``stop``."""
        import torch

        first = requests[0]
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # rows end where generation starts; the engine thread is the only user
        try:
            images = [img for _, _, imgs in rows for img in imgs]
            kwargs: dict[str, Any] = {"text": [p for _, p, _ in rows], "padding": True, "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
            inputs = dict(self.processor(**kwargs))
        finally:
            tok.padding_side = side
        lengths = [int(n) for n in inputs["attention_mask"].sum(dim=1)]
        too_long = [self._length_error(n, first.max_tokens) for n in lengths]
        if any(too_long):
            # Rare: answer the rows that fit together, refuse the others as a single request is refused.
            keep = [k for k, error in enumerate(too_long) if error is None]
            results: list[ChatResult | EngineError | None] = list(too_long)
            if keep:
                kept = self._generate_chunk([requests[k] for k in keep], [rows[k] for k in keep])
                for k, r in zip(keep, kept):
                    results[k] = r
            return results  # type: ignore[return-value]
        width = int(inputs["input_ids"].shape[1])
        with torch.inference_mode(), self._select_adapter(first.model):
            sequences = self.model.generate(**self._on_device(inputs), **self._generate_kwargs(first))
        eos, pad = self._eos_ids(), tok.pad_token_id
        results = []
        for k, n_prompt in enumerate(lengths):
            ids = sequences[k, width:].tolist()
            generated = len(ids)
            stop_at = next((j for j, t in enumerate(ids) if t in eos), None)
            if stop_at is not None:
                ids, generated = ids[:stop_at], stop_at + 1
            else:
                while ids and ids[-1] == pad:  # a row that stopped on a stop string is padded after it
                    ids.pop()
                generated = len(ids)
            finish = "stop" if stop_at is not None or generated < first.max_tokens else "length"
            text = tok.decode(ids, skip_special_tokens=True)
            for s in first.stop or ():
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            results.append(ChatResult(text=text, finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=generated))
        return results
