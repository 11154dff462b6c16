"""The remote backend: chat with a model served by any OpenAI-compatible server.

For models that need more than this machine: vLLM, SGLang, llama.cpp's `llama-server`,
or another Itamae (`itamae serve`). It speaks the wire protocol directly with httpx
(OpenAI's API reference: /v1/models, /v1/chat/completions and /v1/completions with
`stream: true`, server-sent events ending in `data: [DONE]`, `stream_options.
include_usage` for token counts), so the `openai` package is not needed at run time.

The server applies the model's chat template itself, so messages go over as they are.
Sampling fields OpenAI does not have (top_k, min_p, repeat_penalty) are sent under the
names vLLM, SGLang and llama.cpp's server read (all of them accept extra fields). A
cancelled request closes its HTTP stream: every one of these servers stops a generation
whose client went away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from converters.core.errors import ItamaeError
from converters.core.model_info import ModelInfo
from engine.types import Event, FinalEvent, GenerationRequest, SamplingParams, Stats

from .sse import message_of, read_stream, read_whole

# Connecting should be quick on any network a person would use for this; reading may
# wait long (a busy server queues requests, a big prompt takes a while to prefill).
_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)


class RemoteError(ItamaeError):
    pass


def api_base(url: str) -> str:
    """`http://host:8000`, `.../v1` and `.../v1/` all name the same API root."""
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def load(
    url: str | Path,
    *,
    api_key: str | None = None,
    model: str | None = None,
    timeout: httpx.Timeout | float = _TIMEOUT,
    **_ignored,
) -> RemoteBackend:
    """Connect to the server at `url`, pick `model` (default: the first it lists)."""
    backend = RemoteBackend(str(url), api_key=api_key, timeout=timeout)
    try:
        backend.connect(model)
    except BaseException:
        backend.close()
        raise
    return backend


def list_models(url: str, *, api_key: str | None = None, timeout=_TIMEOUT) -> list[str]:
    """The model ids a server offers, for a person to pick one before loading."""
    backend = RemoteBackend(url, api_key=api_key, timeout=timeout)
    try:
        return list(backend.model_cards())
    finally:
        backend.close()


class RemoteBackend:
    def __init__(self, url: str, *, api_key: str | None = None, timeout=_TIMEOUT):
        self.url = url
        self.base = api_base(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout)
        self.info: ModelInfo | None = None
        self.model = ""

    # -- connecting --------------------------------------------------------------------

    def model_cards(self) -> dict[str, dict]:
        """The server's /v1/models entries by id."""
        listed = self._get_json("/models").get("data") or []
        return {card["id"]: card for card in listed if isinstance(card, dict) and "id" in card}

    def connect(self, model: str | None) -> None:
        cards = self.model_cards()
        if not cards:
            raise RemoteError(
                f"The server at {self.url} lists no models.", "Load a model on that server first."
            )
        if model is None:
            model = next(iter(cards))
        elif model not in cards:
            raise RemoteError(
                f"The server at {self.url} has no model {model!r}.",
                f"It serves: {', '.join(map(str, cards))}.",
            )
        self.model = model
        self.info = _model_info(self.url, model, cards[model])

    def _get_json(self, path: str) -> dict:
        try:
            response = self._client.get(self.base + path)
        except httpx.HTTPError as e:
            raise RemoteError(
                f"Cannot reach the model server at {self.url} ({type(e).__name__}: {e}).",
                "Check the URL and that the server is running.",
            ) from e
        _raise_for_status(response, self.url)
        try:
            return response.json()
        except ValueError as e:
            raise RemoteError(
                f"{self.base + path} did not answer JSON; is {self.url} an OpenAI-compatible API?",
                "Point at the server's root or its /v1 address.",
            ) from e

    # -- the Backend interface ---------------------------------------------------------

    def stream(
        self, req: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        cancel = cancel if cancel is not None else threading.Event()
        chat = req.messages is not None
        path = "/chat/completions" if chat else "/completions"
        body = self._body(req, chat)
        started = time.perf_counter()
        try:
            with self._client.stream("POST", self.base + path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    yield FinalEvent("error", Stats(), error=_error_text(response, self.url))
                    return
                if "json" in response.headers.get("content-type", ""):
                    # A server that ignores `stream` answers with one whole object.
                    response.read()
                    yield from read_whole(response.json(), chat, started)
                    return
                yield from read_stream(response, chat, cancel, started)
        except httpx.HTTPError as e:
            if cancel.is_set():
                yield FinalEvent("cancelled", Stats())
            else:
                yield FinalEvent(
                    "error", Stats(), error=f"The connection to {self.url} failed: {e}"
                )

    def tokenize(self, text: str) -> list[int]:
        """Token ids from the server's tokenizer endpoint: /tokenize beside /v1 (vLLM and
        SGLang read "prompt", llama.cpp's server "content", Itamae either), else
        llama-cpp-python's /extras/tokenize ("input")."""
        root = self.base.removesuffix("/v1")
        attempts = [
            ("/tokenize", {"model": self.model, "prompt": text, "content": text}),
            ("/extras/tokenize", {"input": text}),
        ]
        for path, body in attempts:
            try:
                response = self._client.post(root + path, json=body)
            except httpx.HTTPError as e:
                raise RemoteError(f"Cannot reach {self.url} to tokenize: {e}.") from e
            if response.status_code == 404:
                continue
            _raise_for_status(response, self.url)
            return list(response.json()["tokens"])
        raise RemoteError(
            f"The model server at {self.url} has no tokenizer endpoint.",
            "Token counts come from the server's usage reports instead.",
        )

    def close(self) -> None:
        self._client.close()

    def _body(self, req: GenerationRequest, chat: bool) -> dict:
        body: dict = {
            "model": self.model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if chat:
            body["messages"] = [{"role": m.role, "content": m.content} for m in req.messages]
        else:
            body["prompt"] = req.prompt
        body.update(_sampling_fields(req.sampling))
        if req.experts_per_token is not None:
            body["experts_per_token"] = req.experts_per_token  # read by another Itamae
        template_kwargs = {
            name: value
            for name, value in (
                ("enable_thinking", req.enable_thinking),
                ("reasoning_effort", req.reasoning_effort),
            )
            if value is not None
        }
        if chat and template_kwargs:
            # llama.cpp's server (and vLLM) hand these to the model's chat template
            body["chat_template_kwargs"] = template_kwargs
        return body


def _sampling_fields(sampling: SamplingParams) -> dict:
    fields: dict = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.stop:
        fields["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    # min_p and the repeat penalty go over even when off (0, 1.0): servers have their own
    # defaults (llama.cpp's server penalises repeats by 1.1), and the person asked for off.
    fields["min_p"] = sampling.min_p
    fields["repeat_penalty"] = sampling.repeat_penalty  # llama.cpp's server, Itamae
    fields["repetition_penalty"] = sampling.repeat_penalty  # vLLM, SGLang
    if sampling.top_k > 0:  # "off" is spelled 0 or -1 depending on the server; SGLang refuses 0
        fields["top_k"] = sampling.top_k
    if sampling.presence_penalty or sampling.frequency_penalty:
        fields["presence_penalty"] = sampling.presence_penalty
        fields["frequency_penalty"] = sampling.frequency_penalty
    if sampling.logit_bias:  # token ids of the remote model's own vocabulary
        fields["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
    return fields


def _model_info(url: str, model: str, card: dict) -> ModelInfo:
    # Context length under the names servers use: vLLM's max_model_len, llama.cpp's
    # meta.n_ctx_train, others' context_length.
    meta = card.get("meta") or {}
    context = card.get("max_model_len") or meta.get("n_ctx_train") or card.get("context_length")
    return ModelInfo(
        path=url,  # a URL, not a file: str(info.path) is what the UI shows
        format="remote",
        arch=str(card.get("arch") or meta.get("arch") or "remote"),
        name=model,
        context_length=int(context or 0),
        vocab_size=int(meta.get("n_vocab") or 0),
        total_params=int(meta.get("n_params") or 0),
        size_bytes=int(meta.get("size") or 0),
        extra={"url": url, "owned_by": card.get("owned_by", "")},
    )


def _error_text(response: httpx.Response, url: str) -> str:
    try:
        data = response.json()
        detail = message_of(data.get("error") or data) if isinstance(data, dict) else str(data)
    except ValueError:
        detail = response.text[:500]
    return f"The model server at {url} answered {response.status_code}: {detail}"


def _raise_for_status(response: httpx.Response, url: str) -> None:
    if response.status_code == 401:
        raise RemoteError(
            f"The model server at {url} refused the API key (401).",
            "Pass the key the server was started with (api_key option).",
        )
    if response.status_code >= 400:
        raise RemoteError(_error_text(response, url))
