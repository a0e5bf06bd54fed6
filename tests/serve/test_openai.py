"""The official `openai` client, unchanged, against a real uvicorn server on a free loopback port."""

from __future__ import annotations

import numpy as np
import pytest

import bertkit
from bertkit.serve.settings import ServeArgs
from tests.serve.conftest import NEEDS_SERVE, ServerThread, free_port

pytest.importorskip("uvicorn", reason=NEEDS_SERVE)
openai = pytest.importorskip("openai", reason="the test extra's openai client is not installed")

TEXTS = ["A man is playing a guitar.", "Someone is strumming a guitar on stage.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def server(minilm_dir):
    with ServerThread(ServeArgs(model=str(minilm_dir), port=free_port(), api_key="test-key",
                                max_client_batch_size=4)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=0, timeout=60)


def test_the_openai_client_gets_the_offline_vectors(client, minilm_dir):
    expected = bertkit.embed(TEXTS, model=minilm_dir)
    result = client.embeddings.create(input=TEXTS, model="all-MiniLM-L6-v2")  # the client asks for base64
    assert [d.index for d in result.data] == [0, 1, 2]
    np.testing.assert_allclose([d.embedding for d in result.data], expected, atol=1e-6, rtol=0)
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(TEXTS) * 2
    floats = client.embeddings.create(input=TEXTS[0], model="m", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, expected[0], atol=1e-6, rtol=0)
    assert [m.id for m in client.models.list()] == ["model"]  # the served folder's name
    short = client.embeddings.create(input=TEXTS, model="m", dimensions=128)
    cut = expected[:, :128] / np.linalg.norm(expected[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose([d.embedding for d in short.data], cut, atol=1e-6, rtol=0)


def test_errors_reach_the_client_with_their_status(client, server):
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(input=["t"] * 5, model="m")
    assert e.value.status_code == 413 and "max_client_batch_size of 4" in e.value.response.json()["error"]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(input="x", model="m", dimensions=1000)
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(input="x", model="m")
    assert client.embeddings.create(input="still fine", model="m").data  # and the server goes on
