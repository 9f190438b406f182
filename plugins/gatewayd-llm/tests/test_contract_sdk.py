"""The official OpenAI SDK through a live gateway, every request and answer validated against
the published document (gatewayd_llm/openapi.yaml) with openapi-core: chat (whole and
streamed), completions (whole and streamed), embeddings, the model list and one model, and
an error. The SDK's HTTP client has event hooks that keep each exchange; a streamed answer's
events are each validated against the chunk schemas the document names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
from fake_openai_server import FakeOpenAI
from gatewayd_llm.contract import document
from jsonschema import ValidationError
from llm_testkit import LlmGateway, openai_upstream
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.response.exceptions import InvalidData
from openapi_schema_validator import OAS31Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

MSGS = [{"role": "user", "content": "hello there"}]


@dataclass
class SeenRequest:
    """An SDK request as openapi-core's Request protocol reads it."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None


@dataclass
class SeenResponse:
    """The gateway's answer as openapi-core's Response protocol reads it."""

    status_code: int
    content_type: str
    headers: Headers
    data: bytes


@dataclass
class Exchanges:
    """What the SDK's HTTP client sent and got, in order."""

    pairs: list[tuple[SeenRequest, SeenResponse]] = field(default_factory=list)

    async def on_response(self, response: Any) -> None:
        await response.aread()  # the whole body (a stream too), then the SDK reads it again
        request = response.request
        url = urlsplit(str(request.url))
        seen = SeenRequest(
            host_url=f"{url.scheme}://{url.netloc}",
            path=url.path,
            method=request.method.lower(),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qs(url.query)),
                header=Headers(dict(request.headers)),
                cookie=ImmutableMultiDict(),
            ),
            content_type=request.headers.get("content-type", ""),
            body=request.content or None,
        )
        answer = SeenResponse(
            status_code=response.status_code,
            content_type=response.headers.get("content-type", ""),
            headers=Headers(dict(response.headers)),
            data=response.content,
        )
        self.pairs.append((seen, answer))


def sse_data(raw: bytes) -> list[str]:
    events = [e for e in raw.decode().split("\n\n") if e.strip()]
    out = []
    for event in events:
        lines = [line[5:].lstrip() for line in event.split("\n") if line.startswith("data:")]
        out.append("\n".join(lines))
    return out


class Contract:
    """The document, and the validation of one exchange against it."""

    def __init__(self) -> None:
        self.document = document()
        self.api = OpenAPI.from_dict(self.document)

    def schema(self, name: str) -> OAS31Validator:
        root = {"$ref": f"#/components/schemas/{name}", "components": self.document["components"]}
        return OAS31Validator(root)

    def check(self, request: SeenRequest, response: SeenResponse) -> None:
        self.api.validate_request(request)
        if response.content_type.startswith("text/event-stream"):
            self.check_stream(request, response)
        else:
            self.api.validate_response(request, response)

    def check_stream(self, request: SeenRequest, response: SeenResponse) -> None:
        assert response.status_code == 200
        op = self.document["paths"][request.path][request.method]
        assert "text/event-stream" in op["responses"]["200"]["content"]
        chunk = self.schema(
            "CompletionChunk" if request.path.endswith("/v1/completions") else "ChatCompletionChunk"
        )
        data = sse_data(response.data)
        assert data[-1] == "[DONE]", data[-3:]
        assert len(data) > 1
        for item in data[:-1]:
            chunk.validate(json.loads(item))


@pytest.fixture
async def sdk_gateway(
    fake_openai: FakeOpenAI, llm_config: Any, llm_gateway: Any
) -> tuple[LlmGateway, openai.AsyncOpenAI, Exchanges]:
    upstreams = {"main": openai_upstream(fake_openai.url)}
    llm = {"models": {"m": [{"upstream": "main", "model": "fake-model", "context_window": 8192}]}}
    gw = await llm_gateway(llm_config(upstreams, llm))
    exchanges = Exchanges()
    http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [exchanges.on_response]})
    client = openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key=gw.key, max_retries=0, http_client=http
    )
    return gw, client, exchanges


async def test_every_sdk_call_is_what_the_document_says(
    sdk_gateway: tuple[LlmGateway, openai.AsyncOpenAI, Exchanges],
) -> None:
    _, client, exchanges = sdk_gateway
    contract = Contract()
    async with client:
        chat = await client.chat.completions.create(model="m", messages=MSGS, max_tokens=3)
        assert chat.choices[0].message.content
        stream = await client.chat.completions.create(
            model="m",
            messages=MSGS,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        legacy = await client.completions.create(model="m", prompt="Say this", max_tokens=2)
        assert legacy.choices[0].text
        legacy_stream = await client.completions.create(
            model="m", prompt="Say this", max_tokens=2, stream=True
        )
        assert [c async for c in legacy_stream]
        embedded = await client.embeddings.create(model="m", input=["one", "two"])
        assert len(embedded.data) == 2
        listed = await client.models.list()
        assert [m.id for m in listed.data] == ["m"]
        one = await client.models.retrieve("m")
        assert one.id == "m"
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="no-such-model", messages=MSGS)
        assert missing.value.code == "model_not_found"

    paths = [(r.method, r.path) for r, _ in exchanges.pairs]
    assert paths == [
        ("post", "/v1/chat/completions"),
        ("post", "/v1/chat/completions"),
        ("post", "/v1/completions"),
        ("post", "/v1/completions"),
        ("post", "/v1/embeddings"),
        ("get", "/v1/models"),
        ("get", "/v1/models/m"),
        ("post", "/v1/chat/completions"),
    ]
    for request, response in exchanges.pairs:
        contract.check(request, response)
    assert [r.status_code for _, r in exchanges.pairs][-1] == 404


async def test_an_answer_off_the_document_is_caught() -> None:
    """The validation is not vacuous: a chat answer without ``choices`` fails it."""
    contract = Contract()
    body = json.dumps({"model": "m", "messages": MSGS}).encode()
    request = SeenRequest(
        host_url="http://127.0.0.1:1",
        path="/v1/chat/completions",
        method="post",
        parameters=RequestParameters(
            query=ImmutableMultiDict(),
            header=Headers({"Authorization": "Bearer k"}),
            cookie=ImmutableMultiDict(),
        ),
        content_type="application/json",
        body=body,
    )
    broken = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m"})
    response = SeenResponse(200, "application/json", Headers(), broken.encode())
    with pytest.raises(InvalidData) as caught:
        contract.check(request, response)
    assert "'choices' is a required property" in repr(caught.value.__cause__)
    chunk = contract.schema("ChatCompletionChunk")
    with pytest.raises(ValidationError, match="'choices' is a required property"):
        chunk.validate({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"})
