import httpx
import pytest
import torch

from model.glccl import RetrievalModel, make_config
from service.encode_cache import EncodeCache, normalise
from tests.service.serving import CAPTIONS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=16)).eval()


def encoder(model, calls):
    from model.encoders import trim_tokens

    def encode(texts):
        calls.append(list(texts))
        with torch.inference_mode():
            return model.encode_text(trim_tokens(model.tokenizer()(texts)))

    return encode


def test_cached_features_equal_fresh_ones_in_any_batch(model):
    calls = []
    cache = EncodeCache(100)
    texts = ["a red circle moves left", "a much longer query about a blue square that grows then shrinks", "x"]
    first = cache.encode(texts, encoder(model, calls))
    again = cache.encode(["X ", texts[0], "  A RED circle   moves left"], encoder(model, calls))  # all cached
    assert calls == [texts] and (cache.hits, cache.misses) == (3, 3)
    fresh = encoder(model, [])(["x", texts[0], texts[0]])
    torch.testing.assert_close(again.sentence, fresh.sentence)
    width = fresh.words.shape[1]  # trimmed to the longest of the batch
    assert again.words.shape[1] == width  # padded to the longest of this batch, not of the one that filled it
    torch.testing.assert_close(
        again.words * again.word_mask[..., None], fresh.words[:, :width] * fresh.word_mask[:, :width, None]
    )
    assert torch.equal(again.word_mask, fresh.word_mask[:, :width])
    torch.testing.assert_close(first.sentence[1], encoder(model, [])([texts[1]]).sentence[0])


def test_the_cache_is_bounded_and_keeps_the_recent(model):
    calls = []
    cache = EncodeCache(2)
    encode = encoder(model, calls)
    cache.encode(["a"], encode)
    cache.encode(["b"], encode)
    cache.encode(["a"], encode)  # a is now the most recent
    cache.encode(["c"], encode)  # evicts b
    assert len(cache) == 2 and calls == [["a"], ["b"], ["c"]]
    cache.encode(["a", "b"], encode)
    assert calls[-1] == ["b"] and (cache.hits, cache.misses) == (2, 4)
    off = EncodeCache(0)
    off.encode(["a"], encode)
    off.encode(["a"], encode)
    assert len(off) == 0 and calls[-2:] == [["a"], ["a"]]
    assert normalise("  Red\tCIRCLE \n") == "red circle"


def test_hits_and_misses_in_metrics(serve):
    server = serve()
    for q in (CAPTIONS[0], CAPTIONS[1], CAPTIONS[0].upper(), CAPTIONS[0]):
        assert httpx.post(f"{server.url}/search", json={"query": q, "top_k": 3}).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert 'glccl_encode_cache_total{result="hit"} 2.0' in text
    assert 'glccl_encode_cache_total{result="miss"} 2.0' in text  # the warm-up query is not counted
    assert "glccl_encode_cache_entries 2.0" in text
    off = serve(encode_cache=0)
    httpx.post(f"{off.url}/search", json={"query": CAPTIONS[0]})
    httpx.post(f"{off.url}/search", json={"query": CAPTIONS[0]})
    assert 'glccl_encode_cache_total{result="hit"} 0.0' in httpx.get(f"{off.url}/metrics").text
