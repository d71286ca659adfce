"""The engine's stages: ANN pool, exact narrowing with the head's coarse score, full re-rank."""

import copy
import os

import numpy as np
import pytest
import torch

from model.features import TextFeatures, VideoFeatures
from model.glccl import RetrievalModel, make_config
from ops.bench.service_corpus import query_texts
from service.catalog import Catalog
from service.engine import Query, SearchEngine
from service.index import IndexParams
from tests.service.serving import build_synthetic_index

VIDEOS = 120


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=16)).eval()
    with torch.no_grad():  # trained heads are not the identity: make sure nothing relies on it
        for mix in model.head.mix.values():
            mix.add_(0.2 * torch.randn_like(mix))
        model.head.global_mix.add_(0.05 * torch.randn_like(model.head.global_mix))
    return model


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, tiny_model):
    with Catalog.open(build_synthetic_index(tiny_model, tmp_path_factory.mktemp("two-stage"), VIDEOS)) as opened:
        yield opened


def test_coarse_score_is_the_heads_sentence_and_word_scores(tiny_model):
    d = tiny_model.config.embed_dim
    gen = torch.Generator().manual_seed(3)
    text = TextFeatures(
        torch.randn(3, d, generator=gen), torch.randn(3, 6, d, generator=gen), torch.ones(3, 6, dtype=bool)
    )
    text.word_mask[1, 4:] = False
    video = VideoFeatures(torch.randn(7, 4, d, generator=gen), torch.ones(7, 4, dtype=bool))
    video.frame_mask[2, 2:] = False
    head = copy.deepcopy(tiny_model.head)
    with torch.no_grad():  # trained heads' matrices are not the identity they start as
        head.global_mix.add_(0.05 * torch.randn(d, d, generator=gen))
        head.mix["vw"].add_(0.05 * torch.randn(*head.mix["vw"].shape, generator=gen))
        full = head(text, video)
        coarse = head.coarse(text, video)
    torch.testing.assert_close(coarse, (full["vs"] + full["vw"]) / 2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [0, 7, 256])  # the whole pool at once, several chunks (one short), one
def test_narrowing_keeps_the_best_of_the_pool_by_the_coarse_score(catalog, tiny_model, chunk):
    engine = SearchEngine(tiny_model, catalog, candidates=15, pool=VIDEOS)  # the pool is the whole corpus
    engine.narrow_chunk = chunk
    texts = query_texts(4)
    ids = catalog.ids()
    batch = catalog.get_frames(ids)
    video = VideoFeatures(torch.from_numpy(batch.frames).float(), torch.from_numpy(batch.mask))
    for text, outcome in zip(texts, engine.search([Query(t, 15) for t in texts]), strict=True):
        with torch.no_grad():
            coarse = tiny_model.head.coarse(engine.encode([text]), video)[0]
        want = {ids[i] for i in torch.topk(coarse, 15).indices.tolist()}
        assert {h.video_id for h in outcome.hits} == want
        scores = [h.score for h in outcome.hits]
        assert scores == sorted(scores, reverse=True)
        assert {"candidates", "frames", "narrow", "rerank"} <= set(outcome.timing_ms)


def test_two_stage_equals_exhaustive_when_the_candidates_cover_the_corpus(catalog, tiny_model):
    texts = query_texts(6)
    staged = SearchEngine(tiny_model, catalog, candidates=VIDEOS, pool=10)  # pool raised to the candidates
    exhaustive = SearchEngine(tiny_model, catalog, candidates=5, exhaustive=True)
    for a, b in zip(
        staged.search([Query(t, 10) for t in texts]), exhaustive.search([Query(t, 10) for t in texts]), strict=True
    ):
        assert [h.video_id for h in a.hits] == [h.video_id for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=1e-4)


def test_indexes_written_before_the_vectors_setting_hold_raw_frames():
    assert IndexParams.from_dict({"kind": "ivf", "nlist": 4}).vectors == "frames"
    assert IndexParams().vectors == "cosine"
    with pytest.raises(ValueError, match="unknown index vectors"):
        IndexParams(vectors="max")


def test_a_worker_thread_takes_the_services_thread_setting():
    """OpenMP and BLAS thread counts are per thread: a batcher worker must not start with every core."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    from service.engine import fit_threads, own_threads

    fit_threads(1)
    with ThreadPoolExecutor(1) as worker:
        before = worker.submit(threadpool_info).result()
        after = worker.submit(lambda: (own_threads(), threadpool_info())[1]).result()
    assert after and all(pool["num_threads"] == 1 for pool in after)
    if os.cpu_count() and os.cpu_count() > 1:  # without own_threads a new thread has more than one somewhere
        assert any(pool["num_threads"] > 1 for pool in before)
