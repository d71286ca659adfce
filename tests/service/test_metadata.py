"""Video metadata and search filters: the filter language, filtered candidates, filtered searches."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from model.glccl import RetrievalModel, make_config
from ops.bench.service_corpus import encode_texts, query_texts
from service.catalog import Catalog
from service.engine import Query, SearchEngine
from service.index import IndexParams, search_params
from service.metadata import BadMetadata, Filter, check_metadata, compile_filter, merge_patch
from tests.service.serving import build_synthetic_index

VIDEOS = 120

LIBRARY = {
    "a": {"tags": ["cats", "pets"], "year": 2019, "lang": "en", "published": "2019-05-01", "flag": True},
    "b": {"tags": ["dogs"], "year": 2021, "lang": "fr", "published": "2021-01-01T10:00:00+01:00", "flag": 1},
    "c": {"tags": "cats", "year": 2023.5, "lang": "en", "src": {"site": "x"}},
    "d": {"title": "no tags"},
}


def matching(where: dict) -> set[str]:
    test = compile_filter(Filter.model_validate(where))
    return {k for k, meta in LIBRARY.items() if test(meta)}


def test_filters_select_what_they_say():
    assert matching({"field": "tags", "eq": "cats"}) == {"a", "c"}  # a list field, or a plain value
    assert matching({"field": "lang", "in": ["fr", "de"]}) == {"b"}
    assert matching({"field": "year", "gte": 2021}) == {"b", "c"}
    assert matching({"field": "year", "gt": 2019, "lt": 2023}) == {"b"}
    assert matching({"field": "published", "gte": "2020-01-01"}) == {"b"}  # dates, with or without a zone
    assert matching({"field": "published", "lt": "2021-01-01T09:30:00Z"}) == {"a", "b"}  # 10:00+01:00 is 09:00Z
    assert matching({"field": "src.site", "eq": "x"}) == {"c"}  # dotted paths reach nested objects
    assert matching({"field": "flag", "eq": True}) == {"a"}  # true is not 1
    assert matching({"field": "flag", "eq": 1}) == {"b"}
    assert matching({"field": "year", "eq": 2019.0}) == {"a"}  # 2019 equals 2019.0
    assert matching({"not": {"field": "tags", "eq": "cats"}}) == {"b", "d"}  # a missing field does not match
    both = {"and": [{"field": "lang", "eq": "en"}, {"not": {"field": "year", "lt": 2020}}]}
    assert matching(both) == {"c"}
    either = {"or": [{"field": "title", "eq": "no tags"}, {"field": "tags", "in": ["dogs"]}]}
    assert matching(either) == {"b", "d"}
    assert matching({"field": "lang", "gte": 1}) == set()  # a range over a text field matches nothing


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({}, "this one is empty"),
        ({"field": "a", "eq": 1, "in": [1]}, "combines eq, in"),
        ({"eq": 1}, "needs a 'field'"),
        ({"field": "a", "and": [{"field": "b", "eq": 1}]}, "'field' goes in a condition"),
        ({"and": []}, "'and' needs at least one filter"),
        ({"field": "a", "in": []}, "'in' needs at least one value"),
        ({"field": "a", "gte": 1, "lt": "2020-01-01"}, "not a mix"),
        ({"field": "a", "gte": "soon"}, "neither a number nor an ISO 8601 date"),
        ({"field": "a", "like": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_filters_say_what_to_fix(where, message):
    with pytest.raises(ValidationError, match=message):
        Filter.model_validate(where)


def test_filter_size_limits_and_canonical_key():
    deep: dict = {"field": "a", "eq": 1}
    for _ in range(8):
        deep = {"not": deep}
    with pytest.raises(ValueError, match="nest at most 8"):
        Filter.model_validate(deep).size()
    wide = Filter.model_validate({"or": [{"field": "a", "eq": i} for i in range(65)]})
    with pytest.raises(ValueError, match="at most 64 conditions"):
        wide.size()
    one = Filter.model_validate({"and": [{"field": "a", "in": [1, 2]}]})
    assert one.key() == Filter.model_validate({"and": [{"in": [1, 2], "field": "a"}]}).key()


def test_metadata_checks_and_merge_patch():
    assert check_metadata({"title": "t"}) == {"title": "t"}
    for bad, message in (([1], "JSON object"), ({"": 1}, "non-empty"), ({"x": "y" * 100}, "the limit is 64")):
        with pytest.raises(BadMetadata, match=message):
            check_metadata(bad, limit=64)
    with pytest.raises(BadMetadata, match="NaN"):
        check_metadata({"x": float("nan")})
    old = {"title": "a", "tags": ["x"], "src": {"site": "s", "id": 1}}
    patch = {"title": None, "tags": ["y"], "src": {"id": 2}, "new": True}
    assert merge_patch(old, patch) == {"tags": ["y"], "src": {"site": "s", "id": 2}, "new": True}


def test_a_filtered_ivf_search_probes_more_lists():
    params = IndexParams(kind="ivf", nlist=100, nprobe=8)
    assert search_params(params, None, share=0.5).nprobe == 16
    assert search_params(params, None, share=0.01).nprobe == 100  # never more than every list


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=16)).eval()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, tiny_model):
    """120 synthetic videos; video i has {"bucket": i % 10, "tags": ["even"|"odd"]}; two more added
    after the build (the delta) and one base video deleted (a tombstone)."""
    with Catalog.open(build_synthetic_index(tiny_model, tmp_path_factory.mktemp("filtered"), VIDEOS)) as opened:
        for i, video_id in enumerate(opened.ids()):
            opened.set_metadata(video_id, {"bucket": i % 10, "tags": ["even" if i % 2 == 0 else "odd"]})
        ids = opened.ids()
        batch = opened.get_frames([ids[11], ids[13]])  # copies of odd videos of bucket 1 and 3: no ties below
        for j in range(2):
            opened.put_video(
                f"late{j}", batch.frames[j], batch.mask[j], batch.times[j], {"bucket": 0, "tags": ["even"]}
            )
        opened.delete_video(opened.ids()[10])  # bucket 0
        yield opened


SELECTIVE = Filter.model_validate({"field": "bucket", "eq": 0})  # 13 of 121 videos
BROAD = Filter.model_validate({"field": "tags", "in": ["even"]})  # 61 of 121


def test_filtered_candidates_are_the_best_of_the_matching_videos(catalog, tiny_model):
    text = encode_texts(tiny_model, query_texts(6))
    queries = text.sentence.numpy()
    for where in (SELECTIVE, BROAD):
        allowed = catalog.matching(where)
        assert "late0" in allowed and catalog.ids()[9] not in allowed  # the delta is matched too
        everything = catalog.search_candidates(queries, len(catalog))
        filtered = catalog.search_candidates(queries, 8, allowed)
        for (all_ids, _), (ids, _) in zip(everything, filtered, strict=True):
            assert ids == [v for v in all_ids if v in allowed][:8]


def test_filtered_search_is_the_filtered_corpus_top_k(catalog, tiny_model):
    queries = [Query(q, 5, where) for q in query_texts(6) for where in (SELECTIVE, BROAD)]
    exhaustive = SearchEngine(tiny_model, catalog, candidates=60, exhaustive=True).search(queries)
    # pool 16: the selective filter's 13 videos all go to the narrowing; the broad one searches FAISS with a selector
    two_stage = SearchEngine(tiny_model, catalog, candidates=16, pool=16, exhaustive=False).search(queries)
    for q, ex, ts in zip(queries, exhaustive, two_stage, strict=True):
        allowed = catalog.matching(q.where)
        assert len(ex.hits) == len(ts.hits) == 5 and all(h.video_id in allowed for h in ex.hits + ts.hits)
        if q.where is SELECTIVE:  # every match scored with S: exact
            assert [h.video_id for h in ts.hits] == [h.video_id for h in ex.hits]
    nothing = Filter.model_validate({"field": "bucket", "eq": 99})
    for exhaustive_path in (True, False):
        engine = SearchEngine(tiny_model, catalog, candidates=60, exhaustive=exhaustive_path)
        assert engine.search([Query("a red circle", 5, nothing)])[0].hits == []


def test_matches_follow_changes(catalog):
    before = catalog.matching(SELECTIVE)
    video_id = sorted(before)[0]
    catalog.set_metadata(video_id, {"bucket": 3})
    assert catalog.matching(SELECTIVE) == before - {video_id}
    catalog.set_metadata(video_id, {"bucket": 0})
    assert catalog.matching(SELECTIVE) == before


def test_a_video_added_after_a_filtered_search_is_found_by_the_next(catalog, tiny_model):
    query = encode_texts(tiny_model, query_texts(1)).sentence.numpy()
    before = catalog.search_candidates(query, 3, catalog.matching(BROAD))[0][0]  # caches the FAISS selector
    batch = catalog.get_frames([before[0]])
    catalog.put_video("late-copy", batch.frames[0], batch.mask[0], batch.times[0], {"tags": ["even"]})
    try:
        after = catalog.search_candidates(query, 3, catalog.matching(BROAD))[0][0]
        assert "late-copy" in after[:2]  # a copy of the best match ties with it
    finally:
        catalog.delete_video("late-copy")
    assert "late-copy" not in catalog.search_candidates(query, 3, catalog.matching(BROAD))[0][0]


def test_word_pools_add_each_words_nearest_and_keep_to_the_filter(catalog, tiny_model):
    text = encode_texts(tiny_model, query_texts(3))
    plain = SearchEngine(tiny_model, catalog, candidates=4, pool=8).pools(text, catalog)
    engine = SearchEngine(tiny_model, catalog, candidates=4, pool=8, word_pool=5)
    with_words = engine.pools(text, catalog)
    allowed = catalog.matching(BROAD)
    filtered = engine.pools(text, catalog, [allowed, None, allowed])
    for i in range(len(text)):
        assert with_words[i][:8] == plain[i] and len(with_words[i]) > 8  # the sentence's pool, then the words'
        words_nearest = catalog.search_candidates(text.words[i][text.word_mask[i]].numpy(), 5)
        assert set(with_words[i]) == set(plain[i]).union(*(ids for ids, _ in words_nearest))
    assert filtered[1] == with_words[1]
    assert all(v in allowed for i in (0, 2) for v in filtered[i]) and len(filtered[0]) > 8
