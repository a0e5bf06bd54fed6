"""The HTTP API through FastAPI's TestClient: every endpoint against the offline code on the same
inputs, every bad request with its status and message, and the server healthy after each."""

from __future__ import annotations

import asyncio
import base64
import json
import random

import numpy as np
import pytest

import bertkit
from bertkit.serve.app import create_app
from bertkit.serve.settings import MAX_BODY_BYTES, ServeArgs
from tests.serve.conftest import NEEDS_SERVE

TestClient = pytest.importorskip("fastapi.testclient", reason=NEEDS_SERVE).TestClient
pytest.importorskip("prometheus_client", reason=NEEDS_SERVE)

TEXTS = ["A man is playing a guitar.", "Shares dropped as investors worried about inflation.", "北京是中国的首都。",
         "short", "a somewhat longer sentence, with punctuation; and a few more words to make it longer still"]


def close(a, b, tol=2e-6) -> bool:
    """JSON values equal, numbers within `tol` (to_json rounds to 6 decimals; batches round differently)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    with TestClient(create_app(ServeArgs(model=str(minilm_dir), max_client_batch_size=8))) as client:
        yield client


@pytest.fixture(scope="module")
def offline(minilm_dir):
    return bertkit.Embedder.from_pretrained(minilm_dir)


def served(directory, **settings):
    return TestClient(create_app(ServeArgs(model=str(directory), **settings)))


# ---- embeddings -------------------------------------------------------------------------------------------


def test_served_compiled_a_classifier_answers_as_offline(task_model, monkeypatch):
    """`bertkit serve --compile`: the encoder's layers compiled at start; predictions and vectors as eager."""
    from bertkit import compiled

    monkeypatch.setattr(compiled, "_compile_inference", False)  # the switch is put back when the test ends
    directory = task_model("classify")
    inputs = PREDICT_INPUTS["classify"]
    expected = bertkit.pipeline("classify", model=directory)([tuple(x) if isinstance(x, list) else x for x in inputs])
    eager = bertkit.embed("what a lovely day", model=directory)
    with served(directory, truncate=True, compile=True) as client:
        service = client.app.state.service
        bert = service.loaded.model.bert
        assert bert.layers_compiled and service.embedder.model.bert is bert  # one encoder, compiled once
        r = client.post("/predict", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        assert close(r.json(), expected), (r.json(), expected)
        vector = client.post("/embed", json={"inputs": "what a lovely day"}).json()[0]
    np.testing.assert_allclose(vector, eager, atol=1e-5)


def test_openai_embeddings_are_the_offline_vectors(minilm, offline):
    r = minilm.post("/v1/embeddings", json={"input": TEXTS, "model": "anything"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "model"  # the folder's name, not its whole path
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert {d["object"] for d in body["data"]} == {"embedding"}
    tokens = sum(len(ids) for ids in offline.tokenizer(TEXTS)["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, offline(TEXTS), atol=1e-6, rtol=0)


def test_served_in_int8_the_vectors_are_the_offline_int8_ones(minilm_dir, offline):
    """`bertkit serve --precision int8`: the same int8 model as `bertkit embed --precision int8`."""
    int8 = bertkit.Embedder.from_pretrained(minilm_dir, device="cpu", precision="int8")
    with served(minilm_dir, precision="int8") as client:
        r = client.post("/v1/embeddings", json={"input": TEXTS})
    assert r.status_code == 200, r.text
    vectors = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, int8(TEXTS), atol=1e-5, rtol=0)
    assert (vectors * offline(TEXTS)).sum(-1).min() > 0.99  # and near fp32


def test_a_single_string_base64_and_dimensions(minilm, offline):
    expected = offline(TEXTS[:2])  # (2, 384), unit length
    r = minilm.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    assert len(r["data"]) == 1
    vector = np.frombuffer(base64.b64decode(r["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected[0], atol=1e-6, rtol=0)
    r = minilm.post("/v1/embeddings", json={"input": TEXTS[:2], "dimensions": 64}).json()
    short = np.array([d["embedding"] for d in r["data"]])
    assert short.shape == (2, 64)
    cut = expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True)  # Matryoshka: cut, renormalise
    np.testing.assert_allclose(short, cut, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1, atol=1e-6)


def test_tei_embed(minilm, offline):
    r = minilm.post("/embed", json={"inputs": TEXTS[0]})
    assert r.status_code == 200 and len(r.json()) == 1  # TEI answers a list even for one text
    np.testing.assert_allclose(r.json()[0], offline(TEXTS[0]), atol=1e-6, rtol=0)
    raw = minilm.post("/embed", json={"inputs": TEXTS, "normalize": False}).json()
    np.testing.assert_allclose(raw, offline(TEXTS, normalize=False), atol=1e-5, rtol=1e-6)


def test_truncate_cuts_a_long_input_as_offline_truncation_does(minilm, offline):
    long = "word " * 600
    r = minilm.post("/embed", json={"inputs": [long, "short"]})
    assert r.status_code == 413 and "input 0 has 602 tokens, more than the model's maximum of 256" in r.json()["error"]
    r = minilm.post("/embed", json={"inputs": [long, "short"], "truncate": True})
    np.testing.assert_allclose(r.json(), offline([long, "short"]), atol=1e-6, rtol=0)


def test_a_sentence_transformers_folder_is_served_as_its_files_say(tmp_path, minilm_dir):
    """Pooling, Dense, a default prompt left out of pooling, max_seq_length: the offline vectors."""
    import torch

    from bertkit import Tokenizer
    from bertkit.sentence import DenseSettings, SentenceEncoder, SentenceSettings
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    settings = SentenceSettings(pooling=("cls", "max"), max_seq_length=16, prompts={"query": "query: "},
                                default_prompt_name="query", include_prompt=False, dense=(DenseSettings(64, 8),))
    SentenceEncoder(tiny_config(vocab_size=30522), settings).save_pretrained(
        tmp_path, tokenizer=Tokenizer.from_pretrained(minilm_dir))
    with served(tmp_path) as client:
        info = client.get("/info").json()
        assert (info["dimension"], info["max_length"]) == (8, 16)
        want = bertkit.Embedder.from_pretrained(tmp_path)(TEXTS[:3])
        got = client.post("/v1/embeddings", json={"input": TEXTS[:3]}).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in got], want, atol=1e-5, rtol=0)
        long = "word " * 40
        assert "more than the model's maximum of 16" in client.post("/embed", json={"inputs": long}).json()["error"]


def test_tokenize(minilm):
    r = minilm.post("/tokenize", json={"inputs": "Hello world"}).json()
    assert r["tokens"] == ["[CLS]", "hello", "world", "[SEP]"]
    assert r["offsets"] == [[0, 0], [0, 5], [6, 11], [0, 0]]
    assert len(minilm.post("/tokenize", json={"inputs": ["a", "b c"]}).json()) == 2


def test_concurrent_requests_of_mixed_lengths_get_their_own_offline_vectors(minilm_dir, offline):
    """Item 3: however requests are interleaved and batched, each gets what bertkit.embed gives."""
    rng = random.Random(0)
    words = "the of guitar market inflation rain cat dog football phone recipe pasta stage".split()
    requests = [[" ".join(rng.choices(words, k=rng.choice([1, 3, 8, 30, 120]))) for _ in range(rng.randint(1, 6))]
                for _ in range(24)]
    app = create_app(ServeArgs(model=str(minilm_dir), max_wait_ms=50, max_batch_tokens=2048))

    responses = _concurrently(app, "/v1/embeddings", [{"input": texts} for texts in requests])
    app.state.service.close()
    for texts, r in zip(requests, responses):
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, offline(texts), atol=1e-6, rtol=0)
    batches = app.state.metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < len(requests)  # requests did share batches


# ---- predictions ------------------------------------------------------------------------------------------

PREDICT_INPUTS = {
    "classify": ["what a lovely day", ["a text", "and its pair"], {"text": "a dict", "text_pair": "with a pair"}],
    "multilabel": ["pasta and football", "paintings"],
    "tag": ["John Smith lives in New York .", ["Mary", "visited", "Paris"]],
    "qa": [{"question": "Where does John live?", "context": "John lives in New York. " * 30},
           {"question": "Who?", "context": "Mary visited Paris."}],
    "choice": [{"context": "The writer woke up.", "choices": ["Then the writer slept.", "A cat flew.", "Rain."]}],
}


@pytest.mark.parametrize("kind", list(PREDICT_INPUTS))
def test_predict_gives_what_the_pipeline_gives(kind, task_model):
    directory = task_model(kind)
    inputs = PREDICT_INPUTS[kind]
    expected = bertkit.pipeline("classify" if kind == "multilabel" else kind, model=directory)(
        [tuple(x) if isinstance(x, list) and kind == "classify" else x for x in inputs])
    with served(directory, truncate=True) as client:
        r = client.post("/predict", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        assert close(r.json(), expected), (r.json(), expected)
        one = client.post("/predict", json={"inputs": inputs[0]}).json()  # one input in, one object out
        assert close(one, expected[0])
        if kind == "classify":  # a fine-tuned model embeds too, with its own encoder
            vector = client.post("/embed", json={"inputs": "what a lovely day"}).json()[0]
            np.testing.assert_allclose(vector, bertkit.embed("what a lovely day", model=directory), atol=1e-6)
        info = client.get("/info").json()
    assert info["task"] == ("classify" if kind == "multilabel" else kind)
    assert info["dimension"] == 32 and info["version"] == bertkit.__version__


def test_predict_answers_carry_what_the_page_highlights(task_model):
    with served(task_model("qa")) as client:
        p = client.post("/predict", json={"inputs": {"question": "Who?", "context": "Mary visited Paris."}}).json()
        assert set(p) >= {"answer", "score", "start", "end"}
        assert "Mary visited Paris."[p["start"]:p["end"]] == p["answer"]
    with served(task_model("tag")) as client:
        p = client.post("/predict", json={"inputs": "John Smith lives in New York ."}).json()
        assert p["tokens"][:2] == ["John", "Smith"] and len(p["tags"]) == 7
        assert all("start_char" in e for e in p["entities"])
    with served(task_model("classify")) as client:
        info = client.get("/info").json()
        assert info["labels"] == ["neg", "pos"] and info["max_length"] == 128


def test_concurrent_predictions_match_the_pipeline(task_model):
    directory = task_model("qa")
    rng = random.Random(1)
    requests = [[{"question": rng.choice(["Who?", "Where does John live?"]),
                  "context": "John lives in New York. " * rng.choice([1, 5, 40])} for _ in range(rng.randint(1, 3))]
                for _ in range(10)]
    pipe = bertkit.pipeline("qa", model=directory)
    app = create_app(ServeArgs(model=str(directory), max_wait_ms=50))

    responses = _concurrently(app, "/predict", [{"inputs": x} for x in requests])
    app.state.service.close()
    for inputs, r in zip(requests, responses):
        assert close(r.json(), pipe(inputs))


def test_fill_mask(mlm_dir):
    from bertkit.fill_mask import FillMask

    text = "the capital of france is [MASK] and [MASK] ."
    expected = FillMask.from_pretrained(mlm_dir)(text, top_k=3)
    with served(mlm_dir) as client:
        got = client.post("/fill-mask", json={"inputs": text, "top_k": 3}).json()
        assert client.get("/info").json()["task"] == "fill-mask"
        assert client.post("/embed", json={"inputs": "any model embeds"}).status_code == 200
    assert [[c["token"] for c in mask] for mask in got] == [[c.token for c in mask] for mask in expected]
    assert close([[c["score"] for c in mask] for mask in got], [[c.probability for c in mask] for mask in expected])


# ---- health, info, metrics, the page ---------------------------------------------------------------------


def test_health_info_metrics_and_page(minilm):
    assert minilm.get("/health").json() == {"status": "ok"}
    info = minilm.get("/info").json()
    # max_length 256: MiniLM's sentence_bert_config.json says max_seq_length 256, as for `bertkit embed`
    assert (info["task"], info["dimension"], info["max_length"], info["labels"]) == ("embed", 384, 256, None)
    assert info["limits"]["max_client_batch_size"] == 8
    minilm.post("/embed", json={"inputs": ["x", "y z"]})
    minilm.post("/embed", json={"inputs": 3})
    text = minilm.get("/metrics").text
    for name in ("bertkit_requests_total{", "bertkit_errors_total{", "bertkit_request_duration_seconds_bucket{",
                 "bertkit_queue_depth ", "bertkit_requests_in_flight ", "bertkit_batch_size_bucket{",
                 "bertkit_batch_tokens_bucket{", "bertkit_input_tokens_total "):
        assert name in text, name
    assert 'bertkit_errors_total{endpoint="/embed",type="invalid_request"}' in text
    page = minilm.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing fetched elsewhere


# ---- bad requests -----------------------------------------------------------------------------------------

NESTED = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
# (endpoint, body: bytes are sent as they are, anything else as JSON, status, type, words in the message)
BAD_REQUESTS = [
    ("/v1/embeddings", b"x" * (MAX_BODY_BYTES + 1), 413, "too_large", "over this server's limit of 2,097,152 bytes"),
    ("/v1/embeddings", b'{"input": "unclosed', 400, "invalid_request", "not valid JSON"),
    ("/v1/embeddings", b'{"input": "caf\xe9"}', 400, "invalid_request", "not valid UTF-8 (byte 14)"),
    ("/v1/embeddings", b"", 400, "invalid_request", "empty request body"),
    ("/v1/embeddings", NESTED, 400, "invalid_request", "nested too deeply"),
    ("/v1/embeddings", b'{"input": "\\ud800"}', 400, "invalid_request", "lone surrogate"),
    ("/v1/embeddings", ["a list"], 400, "invalid_request", "must be a JSON object, got a list"),
    ("/v1/embeddings", {"model": "m"}, 400, "invalid_request", "missing 'input'"),
    ("/v1/embeddings", {"input": 3}, 400, "invalid_request", "input must be a string or a list of strings, got a number"),
    ("/v1/embeddings", {"input": ["ok", None]}, 400, "invalid_request", "input[1] must be a string, got null"),
    ("/v1/embeddings", {"input": [[1, 2]]}, 400, "invalid_request", "input[0] must be a string, got a list"),
    ("/v1/embeddings", {"input": ""}, 400, "invalid_request", "input is empty"),
    ("/v1/embeddings", {"input": ["ok", "  "]}, 400, "invalid_request", "input[1] is empty"),
    ("/v1/embeddings", {"input": []}, 400, "invalid_request", "empty list"),
    ("/v1/embeddings", {"input": ["t"] * 9}, 413, "too_many_inputs", "9 inputs, more than this server's max_client_batch_size of 8"),
    ("/v1/embeddings", {"input": "word " * 600}, 413, "input_too_long", "input 0 has 602 tokens, more than the model's maximum of 256"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 400, "invalid_request", "encoding_format must be one of float, base64"),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, 400, "invalid_request", "dimensions must be between 1 and 384, got 0"),
    ("/v1/embeddings", {"input": "x", "dimensions": 385}, 400, "invalid_request", "between 1 and 384, got 385"),
    ("/v1/embeddings", {"input": "x", "dimensions": "64"}, 400, "invalid_request", "dimensions must be an integer, got a string"),
    ("/v1/embeddings", {"input": "x", "model": 7}, 400, "invalid_request", "model must be a string, got a number"),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 400, "invalid_request", "normalize must be true or false, got a string"),
    ("/embed", {"inputs": "x", "truncate": 1}, 400, "invalid_request", "truncate must be true or false, got a number"),
    ("/embed", {"input": "x"}, 400, "invalid_request", "missing 'inputs'"),
    ("/tokenize", {"inputs": {"text": "x"}}, 400, "invalid_request", "inputs must be a string or a list of strings, got an object"),
    ("/predict", {"inputs": "x"}, 404, "not_supported", "/predict needs a model from `bertkit finetune`"),
    ("/fill-mask", {"inputs": "a [MASK]"}, 404, "not_supported", "/fill-mask needs a checkpoint with a masked-LM head"),
    ("/nowhere", {"inputs": "x"}, 404, "not_found", "no endpoint /nowhere"),
]


def send(client, endpoint: str, body):
    if isinstance(body, bytes):
        return client.post(endpoint, content=body, headers={"content-type": "application/json"})
    return client.post(endpoint, json=body)


def assert_still_healthy(client) -> None:
    assert client.get("/health").status_code == 200
    assert client.post("/embed", json={"inputs": "still here"}).status_code == 200


@pytest.mark.parametrize(("endpoint", "body", "status", "kind", "words"), BAD_REQUESTS,
                         ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_requests_are_refused_clearly_and_the_server_stays_healthy(minilm, endpoint, body, status, kind, words):
    r = send(minilm, endpoint, body)
    assert r.status_code == status, r.text
    assert r.json()["type"] == kind
    assert words in r.json()["error"]
    assert "\n" not in r.json()["error"]
    assert_still_healthy(minilm)


def test_a_body_streamed_without_a_length_is_cut_at_the_limit(minilm):
    def chunks():
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    r = minilm.post("/v1/embeddings", content=chunks())
    assert r.status_code == 413 and r.json()["type"] == "too_large"
    assert_still_healthy(minilm)


def test_wrong_method(minilm):
    r = minilm.get("/v1/embeddings")
    assert r.status_code == 405 and r.json() == {"error": "GET is not allowed on /v1/embeddings",
                                                 "type": "method_not_allowed"}


def test_bad_task_inputs(task_model):
    with served(task_model("classify")) as client:
        r = client.post("/predict", json={"inputs": [3]})
        assert r.status_code == 400 and r.json()["type"] == "invalid_input"
        assert "input 0: expected a text" in r.json()["error"]
        r = client.post("/predict", json={"inputs": "word " * 200})
        assert r.status_code == 413 and "longer than this model's max_length of 128" in r.json()["error"]
        assert client.post("/predict", json={"inputs": "word " * 200, "truncate": True}).status_code == 200
        assert client.post("/predict", json={"inputs": ""}).status_code == 400
        assert client.get("/health").status_code == 200
    with served(task_model("qa"), max_client_batch_size=2) as client:
        r = client.post("/predict", json={"inputs": "not a question"})
        assert r.status_code == 400 and "expected a dict with 'question' and 'context'" in r.json()["error"]
        r = client.post("/predict", json={"inputs": {"question": "Who?", "context": "word " * 1000}})
        assert r.status_code == 413 and "more than one request may (256 tokens" in r.json()["error"]
        assert client.post("/predict", json={"inputs": {"question": "Who?", "context": "word " * 100}}).status_code == 200
    with served(task_model("choice")) as client:
        assert client.post("/predict", json={"inputs": {"context": "c"}}).status_code == 400


def test_fill_mask_needs_a_mask(mlm_dir):
    with served(mlm_dir) as client:
        r = client.post("/fill-mask", json={"inputs": "no mask here"})
        assert r.status_code == 400 and "input 0 has no [MASK] token" in r.json()["error"]
        r = client.post("/fill-mask", json={"inputs": "a [MASK]", "top_k": 0})
        assert r.status_code == 400 and "top_k must be between 1 and 100" in r.json()["error"]
        r = client.post("/fill-mask", json={"inputs": "[MASK] " + "word " * 100})
        assert r.status_code == 413 and "maximum of 64" in r.json()["error"]


def test_api_key(minilm_dir):
    with served(minilm_dir, api_key="s3cret") as client:
        assert client.get("/health").status_code == 200  # for load balancers
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                        {"Authorization": "s3cret"}):
            for method, path in (("POST", "/v1/embeddings"), ("POST", "/embed"), ("GET", "/info"),
                                 ("GET", "/metrics"), ("POST", "/tokenize"), ("POST", "/predict"), ("GET", "/x")):
                r = client.request(method, path, headers=headers, json={"input": "x", "inputs": "x"})
                assert r.status_code == 401, (path, headers)
                assert r.json()["type"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/embed", headers=good, json={"inputs": "x"}).status_code == 200
        assert client.get("/info", headers=good).json()["api_key"] is True
        assert client.get("/").status_code == 200  # the page holds no model data; it asks for the key


def test_over_max_concurrent_requests_is_429_with_retry_after(minilm_dir):
    """The batcher holds the first requests (max_wait_ms, a budget they do not fill); the third is refused."""
    app = create_app(ServeArgs(model=str(minilm_dir), max_concurrent_requests=2, max_wait_ms=3000))

    async def run():
        import httpx

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = [asyncio.ensure_future(client.post("/embed", json={"inputs": "x"})) for _ in range(2)]
            for _ in range(200):
                if app.state.admission.in_flight == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await client.post("/embed", json={"inputs": "x"})
            done = await asyncio.gather(*first)
            after = await client.post("/embed", json={"inputs": "x"})
            return refused, done, after

    refused, done, after = asyncio.run(run())
    app.state.service.close()
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["type"] == "overloaded"
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200


def test_settings_are_checked():
    from bertkit.errors import InputError

    with pytest.raises(InputError, match="--max-wait-ms must be"):
        ServeArgs(max_wait_ms=-1)
    with pytest.raises(InputError, match="--port must be"):
        ServeArgs(port=70000)
    with pytest.raises(InputError, match="--max-client-batch-size must be at least 1, got 0"):
        ServeArgs(max_client_batch_size=0)
    with pytest.raises(InputError, match="--api-key must be printable ASCII"):
        ServeArgs(api_key=" key")


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("BERTKIT_API_KEY", "from-env")
    assert ServeArgs().api_key == "from-env"
    assert ServeArgs(api_key="given").api_key == "given"
    monkeypatch.setenv("BERTKIT_API_KEY", "")
    assert ServeArgs().api_key is None


def test_a_batch_budget_below_one_input_is_refused(minilm_dir):
    from bertkit.errors import InputError

    with pytest.raises(InputError, match="--max-batch-tokens 100 is less than one input of the model's maximum"):
        create_app(ServeArgs(model=str(minilm_dir), max_batch_tokens=100))


def test_json_errors_are_one_object(minilm):
    r = minilm.post("/v1/embeddings", content=b"{")
    assert set(json.loads(r.content)) == {"error", "type"}


def test_a_failure_inside_the_model_is_a_json_500_and_the_server_goes_on(minilm_dir, monkeypatch):
    app = create_app(ServeArgs(model=str(minilm_dir)))
    service = app.state.service
    run = service._run
    monkeypatch.setattr(service.batcher, "_run", lambda key, payloads: 1 / 0)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/embed", json={"inputs": "x"})
        assert r.status_code == 500 and r.json() == {"error": "internal error: ZeroDivisionError", "type": "internal"}
        monkeypatch.setattr(service.batcher, "_run", run)
        assert client.get("/health").status_code == 200
        assert client.post("/embed", json={"inputs": "x"}).status_code == 200


def _concurrently(app, path: str, bodies: list[dict]) -> list:
    """POST every body to `path` at once (one event loop, in-process ASGI), the answers in order."""
    import httpx

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await asyncio.gather(*(client.post(path, json=body) for body in bodies))

    return asyncio.run(run())
