"""The exhaustive path: frames resident on the device, every video scored with S."""

import numpy as np
import pytest
import torch

from model.features import VideoFeatures
from model.glccl import RetrievalModel, make_config
from model.scoring import score_chunked
from service.catalog import Catalog, StoreSpec, build_catalog
from service.engine import Query, SearchEngine
from service.index import IndexParams
from service.stores.base import StoreManifest
from service.stores.local import LocalStore

F, D = 4, 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=F, max_words=16)).eval()


@pytest.fixture
def catalog(tmp_path, model):
    from model.checkpoint import save_checkpoint

    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    manifest = StoreManifest.for_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    source = LocalStore.create(tmp_path / "features", manifest)
    ids = [f"v{i:03d}" for i in range(120)]
    mask = np.ones((120, F), bool)
    mask[::7, F - 1] = False  # some videos one frame short
    source.put_many(
        ids, rng.standard_normal((120, F, D)).astype(np.float16), mask, np.tile(np.arange(F) * 0.5, (120, 1))
    )
    build_catalog(source, tmp_path / "index", IndexParams(kind="flat"), StoreSpec())
    with Catalog.open(tmp_path / "index") as catalog:
        yield catalog


def brute_force(model, catalog, texts, k):
    """Every video scored with S, straight from the store: the reference."""
    ids = catalog.ids()
    batch = catalog.get_frames(ids)
    video = VideoFeatures(torch.from_numpy(batch.frames).float(), torch.from_numpy(batch.mask))
    tokens = model.tokenizer()(texts)
    with torch.inference_mode():
        scores = score_chunked(model.head, model.encode_text(tokens), video)["S"]
    return [[ids[i] for i in row] for row in torch.topk(scores, k, dim=1).indices.tolist()]


TEXTS = ["a red circle moves left", "a blue square grows then a green star shrinks", "something"]


def test_exhaustive_path_returns_the_full_score_top_k(model, catalog, monkeypatch):
    import service.resident as resident

    monkeypatch.setattr(resident, "SCORE_CHUNK", 50)  # several chunks merged
    engine = SearchEngine(model, catalog, candidates=5, exhaustive=True)
    outcomes = engine.search([Query(t, 10) for t in TEXTS])
    assert [[h.video_id for h in o.hits] for o in outcomes] == brute_force(model, catalog, TEXTS, 10)
    for o in outcomes:
        scores = [h.score for h in o.hits]
        assert scores == sorted(scores, reverse=True)
        assert o.timing_ms["exhaustive"] > 0 and o.timing_ms["narrow"] == 0.0
        batch = catalog.get_frames([h.video_id for h in o.hits])
        for h, times, mask in zip(o.hits, batch.times, batch.mask, strict=True):
            assert mask[h.best_frame] and h.best_time_s == times[h.best_frame]


def test_exhaustive_path_follows_puts_and_deletes(model, catalog):
    engine = SearchEngine(model, catalog, candidates=5, exhaustive=True)
    engine.search([Query(TEXTS[0], 5)])  # resident copy made
    first = [h.video_id for h in engine.search([Query(TEXTS[0], 5)])[0].hits]
    catalog.delete_video(first[0])
    # a new video made to match the query: the sentence feature repeated in every frame, scaled up
    with torch.inference_mode():
        sentence = model.encode_text(model.tokenizer()([TEXTS[0]])).sentence[0].numpy()
    catalog.put_video("new", np.tile(sentence * 4, (F, 1)), np.ones(F, bool), np.arange(F, dtype=np.float32))
    catalog.put_video(first[1], np.zeros((F, D), np.float32) - 1, np.ones(F, bool), np.arange(F, dtype=np.float32))
    rows_before = engine.resident.rows
    hits = [h.video_id for h in engine.search([Query(TEXTS[0], 5)])[0].hits]
    assert hits == brute_force(model, catalog, [TEXTS[0]], 5)[0]
    assert first[0] not in hits and engine.resident.rows == rows_before + 1  # applied row by row, not rebuilt
    assert len(engine.search([Query(TEXTS[0], 500)])[0].hits) == len(catalog) == 120


def test_auto_chooses_exhaustive_for_a_catalog_within_the_pool(model, catalog):
    auto = SearchEngine(model, catalog, candidates=5, exhaustive=None, pool=len(catalog))
    assert auto.use_exhaustive(catalog)
    assert "exhaustive" in auto.search([Query(TEXTS[1], 3)])[0].timing_ms
    staged = SearchEngine(model, catalog, candidates=5, exhaustive=None, pool=len(catalog) - 1)
    assert not staged.use_exhaustive(catalog)  # on the CPU, larger than the pool: two stages
    assert "exhaustive" not in staged.search([Query(TEXTS[1], 3)])[0].timing_ms


def test_a_new_generation_rebuilds_the_resident_copy(model, catalog):
    engine = SearchEngine(model, catalog, candidates=5, exhaustive=True)
    engine.search([Query(TEXTS[0], 3)])
    catalog.delete_video("v000")
    catalog.compact()  # same object, new generation: the journal does not carry over
    assert engine.resident.sync(catalog) is None and engine.resident.rows == len(catalog) == 119
    assert "v000" not in engine.resident.row_of


def test_the_setting_accepts_auto_and_its_boolean_form(monkeypatch):
    from service.settings import Settings

    assert Settings().exhaustive == "auto"
    monkeypatch.setenv("GLCCL_EXHAUSTIVE", "true")
    assert Settings().exhaustive == "always"
    monkeypatch.setenv("GLCCL_EXHAUSTIVE", "false")
    assert Settings().exhaustive == "never"
    monkeypatch.setenv("GLCCL_EXHAUSTIVE", "sometimes")
    with pytest.raises(ValueError, match="auto"):
        Settings()


def test_a_two_event_query_whose_best_single_frame_misleads(model, tmp_path):
    """Decoys hold one faint frame pointing exactly at the query's sentence (cosine 1: the index's best
    frames) among strong unrelated ones, which GLIM's pooling follows; the video S ranks first holds
    both events at full strength. Two stages with a narrow pool miss it; the exhaustive path does not."""
    from model.checkpoint import save_checkpoint

    query = "a red circle moves left then a blue square grows"
    with torch.inference_mode():
        feats = model.encode_text(model.tokenizer()([query, "a red circle moves left", "a blue square grows"]))
    q, e1, e2 = feats.sentence.numpy()
    rng = np.random.default_rng(0)
    scale = np.linalg.norm(e1)
    frames = rng.standard_normal((80, F, D)).astype(np.float32) * scale / np.sqrt(D)
    frames[:40, 0] = 0.05 * q  # decoys: a faint copy of the query
    frames[40] = [e1, e1, e2, e2]  # the two events in order
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    source = LocalStore.create(tmp_path / "features", StoreManifest.for_checkpoint(ckpt))
    ids = [f"v{i:03d}" for i in range(80)]
    source.put_many(ids, frames.astype(np.float16), np.ones((80, F), bool), np.tile(np.arange(F) * 0.5, (80, 1)))
    build_catalog(source, tmp_path / "index", IndexParams(kind="flat"), StoreSpec())
    with Catalog.open(tmp_path / "index") as catalog:
        truth = brute_force(model, catalog, [query], 10)[0]
        by_best_frame, _ = catalog.search_candidates(q[None], 10)[0]
        assert truth[0] == "v040" and truth[0] not in by_best_frame  # the best single frames mislead
        staged = SearchEngine(model, catalog, candidates=10, exhaustive=False, pool=10)
        assert "v040" not in [h.video_id for h in staged.search([Query(query, 10)])[0].hits]
        auto = SearchEngine(model, catalog, candidates=10, exhaustive=None, pool=1000)  # the catalog fits the pool
        assert [h.video_id for h in auto.search([Query(query, 10)])[0].hits] == truth
        # the projected first stage pools frames as S does: the same narrow pool holds the answer, in 8 of 32 directions
        projected = SearchEngine(
            model, catalog, candidates=10, exhaustive=False, pool=10, first_stage="projected", first_stage_dims=8
        )
        assert projected.search([Query(query, 10)])[0].hits[0].video_id == "v040"


def coarse_top(model, catalog, texts, k, allowed=None):
    """Every video scored with the coarse score (S_vs + S_vw) / 2 from the store: the projected stage's reference."""
    ids = [v for v in catalog.ids() if allowed is None or v in allowed]
    batch = catalog.get_frames(ids)
    video = VideoFeatures(torch.from_numpy(batch.frames).float(), torch.from_numpy(batch.mask))
    with torch.inference_mode():
        scores = model.head.coarse(model.encode_text(model.tokenizer()(texts)), video)
    return [[ids[i] for i in row] for row in torch.topk(scores, k, dim=1).indices.tolist()]


def test_the_projected_first_stage_with_every_direction_is_the_coarse_scores_top_pool(model, catalog):
    engine = SearchEngine(
        model, catalog, candidates=5, exhaustive=False, pool=20, first_stage="projected", first_stage_dims=D
    )
    pools = engine.pools(engine.encode(TEXTS), catalog)
    assert pools == coarse_top(model, catalog, TEXTS, 20)  # same videos, in the same order
    assert engine.projected.frames.shape[-1] == D
    # and the search on it: the full score's order over that pool
    hits = engine.search([Query(TEXTS[1], 5)])[0].hits
    assert {h.video_id for h in hits} <= set(pools[1]) and [h.score for h in hits] == sorted(
        [h.score for h in hits], reverse=True
    )


def test_the_projected_first_stage_adds_each_words_nearest_videos(model, catalog):
    """word_pool with the projected stage: the coarse score's top pool, then what each real word's
    vector finds in the index (what S_fw and S_sf reward and the coarse score does not see)."""
    engine = SearchEngine(
        model,
        catalog,
        candidates=5,
        exhaustive=False,
        pool=10,
        word_pool=3,
        first_stage="projected",
        first_stage_dims=D,
    )
    text = engine.encode([TEXTS[1]])
    (pool,) = engine.pools(text, catalog)
    coarse = coarse_top(model, catalog, [TEXTS[1]], 10)[0]
    assert pool[:10] == coarse
    words = text.words[0].float().numpy()[text.word_mask[0].numpy()]
    found = [v for ids, _ in catalog.search_candidates(words, 3, None) for v in ids]
    assert pool[10:] == [v for v in dict.fromkeys(found) if v not in coarse] and len(pool) > 10


def test_the_projected_first_stage_follows_puts_deletes_and_filters(model, catalog):
    engine = SearchEngine(
        model, catalog, candidates=5, exhaustive=False, pool=10, first_stage="projected", first_stage_dims=8
    )
    text = engine.encode([TEXTS[0]])
    first = engine.pools(text, catalog)[0]
    assert engine.projected.frames.shape[-1] == 8 and len(first) == 10
    catalog.delete_video(first[0])
    with torch.inference_mode():
        sentence = model.encode_text(model.tokenizer()([TEXTS[0]])).sentence[0].numpy()
    catalog.put_video("new", np.tile(sentence * 4, (F, 1)), np.ones(F, bool), np.arange(F, dtype=np.float32))
    after = engine.pools(text, catalog)[0]
    assert first[0] not in after and after[0] == "new"  # made to match the query: first even in 8 directions
    allowed = frozenset(catalog.ids()[::3])
    (only,) = engine.pools(text, catalog, [allowed])
    assert len(only) == 10 and set(only) <= allowed


def test_the_projected_first_stage_needs_a_glccl_model(catalog):
    xclip = RetrievalModel(make_config("xclip", backbone="glccl-test", num_frames=F, max_words=16)).eval()
    with pytest.raises(ValueError, match="glccl"):
        SearchEngine(xclip, catalog, first_stage="projected")
    with pytest.raises(ValueError, match="unknown first stage"):
        SearchEngine(xclip, catalog, first_stage="hnsw")


def test_a_filters_rows_are_recomputed_when_the_copy_changes(model, catalog):
    # the same frozenset before and after a put: the cached rows must not hide the new video
    engine = SearchEngine(
        model, catalog, candidates=5, exhaustive=False, pool=10, first_stage="projected", first_stage_dims=8
    )
    text = engine.encode([TEXTS[0]])
    allowed = frozenset([*catalog.ids()[:5], "late"])
    (before,) = engine.pools(text, catalog, [allowed])
    assert sorted(before) == sorted(catalog.ids()[:5])
    assert engine.pools(text, catalog, [allowed]) == [before]  # cached: the same answer
    catalog.put_video("late", np.ones((F, D), np.float32), np.ones(F, bool), np.arange(F, dtype=np.float32))
    (after,) = engine.pools(text, catalog, [allowed])
    assert sorted(after) == sorted([*before, "late"])
