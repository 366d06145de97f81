"""rank_metrics against an independent per-query loop (torchreid's market1501 algorithm)."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from indivaid_core.evaluate import rank_metrics, rank_metrics_from_features


def _loop_reference(dist, qids, gids, qcams=None, gcams=None, loo=False, max_rank=10):
    """One query at a time: stable argsort, drop excluded items, cumsum-based CMC/AP/INP."""
    dist, qids, gids = np.asarray(dist), np.asarray(qids), np.asarray(gids)
    aps, inps, firsts, cmcs = [], [], [], []
    for i in range(dist.shape[0]):
        keep = np.ones(dist.shape[1], dtype=bool)
        if qcams is not None:
            keep &= ~((gids == qids[i]) & (np.asarray(gcams) == np.asarray(qcams)[i]))
        if loo:
            keep[i] = False
        cols = np.flatnonzero(keep)
        order = cols[np.argsort(dist[i, cols], kind="stable")]
        hits = (gids[order] == qids[i]).astype(np.int64)
        if hits.sum() == 0:
            aps.append(np.nan), inps.append(np.nan), firsts.append(-1)
            continue
        cmc = np.minimum(np.cumsum(hits), 1)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)), dtype=np.int64)])
        cmcs.append(cmc[:max_rank])
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision_at * hits).sum() / hits.sum()))
        hit_pos = np.flatnonzero(hits)
        inps.append(hits.sum() / (hit_pos[-1] + 1))
        firsts.append(hit_pos[0] + 1)
    aps, inps = np.array(aps), np.array(inps)
    return {
        "mAP": np.nanmean(aps),
        "mINP": np.nanmean(inps),
        "cmc": np.mean(cmcs, axis=0),
        "ap": aps,
        "inp": inps,
        "first_match_rank": np.array(firsts),
        "n_valid_queries": int((~np.isnan(aps)).sum()),
    }


def _assert_same(got: dict, want: dict) -> None:
    assert got["n_valid_queries"] == want["n_valid_queries"]
    assert got["n_skipped_queries"] == len(want["ap"]) - want["n_valid_queries"]
    np.testing.assert_allclose(got["mAP"], want["mAP"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got["mINP"], want["mINP"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got["cmc"], want["cmc"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got["ap"], want["ap"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(got["inp"], want["inp"], atol=1e-9, rtol=0)
    np.testing.assert_array_equal(got["first_match_rank"], want["first_match_rank"])


def _case(seed: int, q: int = 40, g: int = 120, n_ids: int = 15, levels: int | None = None):
    rng = np.random.default_rng(seed)
    dist = rng.random((q, g)).astype(np.float32)
    if levels is not None:  # coarse values -> many exact ties
        dist = (np.floor(dist * levels) / levels).astype(np.float32)
    return (
        dist,
        rng.integers(0, n_ids, q),
        rng.integers(0, n_ids, g),
        rng.integers(0, 3, q),
        rng.integers(0, 3, g),
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 4])
def test_disjoint_matches_reference_with_and_without_ties(seed: int, levels: int | None) -> None:
    dist, qid, gid, _, _ = _case(seed, levels=levels)
    want = _loop_reference(dist, qid, gid)
    for chunk, threads in ((None, 1), (1, 2), (7, 3)):
        _assert_same(rank_metrics(dist, qid, gid, chunk_size=chunk, n_threads=threads), want)


@pytest.mark.parametrize("levels", [None, 3])
def test_camera_filtering_matches_reference(levels: int | None) -> None:
    dist, qid, gid, qc, gc = _case(5, levels=levels)
    got = rank_metrics(dist, qid, gid, qc, gc, chunk_size=9)
    _assert_same(got, _loop_reference(dist, qid, gid, qc, gc))
    assert got["mAP"] != rank_metrics(dist, qid, gid)["mAP"]  # the filter did something


@pytest.mark.parametrize("levels", [None, 3])
def test_leave_one_out_removes_self_match(levels: int | None) -> None:
    rng = np.random.default_rng(7)
    n = 50
    dist = rng.random((n, n)).astype(np.float32)
    if levels:
        dist = (np.floor(dist * levels) / levels).astype(np.float32)
    ids = rng.integers(0, 12, n)
    np.fill_diagonal(dist, 0.0)  # the self-match would otherwise always be rank 1
    got = rank_metrics(dist, ids, ids, leave_one_out=True, chunk_size=8)
    _assert_same(got, _loop_reference(dist, ids, ids, loo=True))
    cams = rng.integers(0, 2, n)
    got = rank_metrics(dist, ids, ids, cams, cams, leave_one_out=True)
    _assert_same(got, _loop_reference(dist, ids, ids, cams, cams, loo=True))


def test_tie_rule_is_gallery_order() -> None:
    # All distances equal: ranking is gallery order. Query id 1 hits at columns 1 and 3.
    dist = np.zeros((1, 4), dtype=np.float32)
    got = rank_metrics(dist, [1], [0, 1, 0, 1], max_rank=4)
    assert got["first_match_rank"][0] == 2
    np.testing.assert_allclose(got["cmc"], [0, 1, 1, 1])
    np.testing.assert_allclose(got["mAP"], (1 / 2 + 2 / 4) / 2)
    np.testing.assert_allclose(got["mINP"], 2 / 4)
    # -0.0 ties with +0.0, so order stays the gallery order.
    got = rank_metrics(np.array([[0.0, -0.0]], dtype=np.float32), [1], [0, 1])
    assert got["first_match_rank"][0] == 2


def test_skipped_queries_and_single_image_identity() -> None:
    # Query 0 (id "a") has two gallery matches; query 1 (id "solo", a single-image identity in
    # LOO) and query 2 (id "ghost", absent from the gallery) have none.
    dist = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.2, 0.9], [0.4, 0.1, 0.2]])
    got = rank_metrics(dist, ["a", "solo", "ghost"], ["b", "a", "a"])
    assert got["n_valid_queries"] == 1 and got["n_skipped_queries"] == 2
    np.testing.assert_allclose(got["mAP"], (1 / 2 + 2 / 3) / 2)
    assert np.isnan(got["ap"][1]) and got["first_match_rank"][2] == -1
    ids = ["x", "x", "solo"]
    d = np.array([[0.0, 0.5, 0.2], [0.5, 0.0, 0.1], [0.2, 0.1, 0.0]], dtype=np.float32)
    loo = rank_metrics(d, ids, ids, leave_one_out=True, max_rank=3)
    assert loo["n_valid_queries"] == 2 and loo["n_skipped_queries"] == 1
    np.testing.assert_allclose(loo["cmc"], [0, 1, 1])  # the "solo" image outranks each twin
    np.testing.assert_array_equal(loo["first_match_rank"], [2, 2, -1])


def test_float64_and_torch_inputs_agree_with_reference() -> None:
    dist, qid, gid, _, _ = _case(11)
    d64 = dist.astype(np.float64) + np.random.default_rng(0).random(dist.shape) * 1e-9
    _assert_same(rank_metrics(d64, qid, gid, chunk_size=5), _loop_reference(d64, qid, gid))
    _assert_same(rank_metrics(torch.from_numpy(dist), qid, gid), _loop_reference(dist, qid, gid))


def test_from_features_equals_full_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(30, 16, generator=g), torch.randn(90, 16, generator=g)
    qid, gid = (
        torch.randint(0, 10, (30,), generator=g).numpy(),
        torch.randint(0, 10, (90,), generator=g).numpy(),
    )
    for metric in ("euclidean", "cosine"):
        from indivaid_core.evaluate import pairwise_distance

        full = rank_metrics(pairwise_distance(qf, gf, metric), qid, gid)
        chunked = rank_metrics_from_features(
            qf, gf, qid, gid, metric=metric, chunk_size=4, progress=False
        )
        _assert_same(chunked, {**full, "n_valid_queries": full["n_valid_queries"]})


def test_clear_errors() -> None:
    d = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="no query has a true match"):
        rank_metrics(d, [1, 2, 3], [4, 5, 6, 7])
    with pytest.raises(ValueError, match="gallery_ids has 3"):
        rank_metrics(d, [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="leave_one_out needs query == gallery"):
        rank_metrics(d, [1, 2, 3], [1, 2, 3, 4], leave_one_out=True)
    with pytest.raises(ValueError, match="both query_cams and gallery_cams"):
        rank_metrics(d, [1, 2, 3], [1, 2, 3, 4], query_cams=[0, 0, 0])
    d[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(d, [1, 2, 3], [1, 2, 3, 4])


def _torchreid_rank():
    """torchreid's rank.py loaded by path: its package __init__ imports the whole library."""
    spec = importlib.util.find_spec("torchreid")
    if spec is None or not spec.submodule_search_locations:
        return None
    for sub in ("reid/metrics/rank.py", "metrics/rank.py"):
        path = Path(spec.submodule_search_locations[0]) / sub
        if path.is_file():
            mod_spec = importlib.util.spec_from_file_location("torchreid_rank", path)
            mod = importlib.util.module_from_spec(mod_spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod_spec.loader.exec_module(mod)
            return mod
    return None


def test_equals_torchreid_evaluate_rank_python_path() -> None:
    tr = _torchreid_rank()
    if tr is None:
        pytest.skip("torchreid is not installed (optional cross-check: pip install torchreid)")
    # Tie-free float32 distances: torchreid's unstable argsort then ranks exactly like ours.
    dist, qid, gid, qc, gc = _case(3, q=60, g=400, n_ids=30)
    cmc, mAP = tr.evaluate_rank(dist, qid, gid, qc, gc, max_rank=10, use_cython=False)
    got = rank_metrics(dist, qid, gid, qc, gc, max_rank=10)
    assert abs(got["mAP"] - mAP) < 1e-6
    np.testing.assert_allclose(got["cmc"], cmc, atol=1e-6, rtol=0)
    # Cameras all different from the query's = torchreid with the filter switched off.
    cmc, mAP = tr.evaluate_rank(
        dist, qid, gid, np.zeros(60), np.ones(400), max_rank=5, use_cython=False
    )
    got = rank_metrics(dist, qid, gid, max_rank=5)
    assert abs(got["mAP"] - mAP) < 1e-6
    np.testing.assert_allclose(got["cmc"], cmc, atol=1e-6, rtol=0)


def test_negative_distances_and_torch_key_path() -> None:
    """Negative values (e.g. -cosine) and -0.0 on the numpy path; the torch (GPU) path on CPU."""
    from indivaid_core.evaluate.ranking import chunk_ranks

    dist, qid, gid, qc, gc = _case(9, levels=4)
    dist = dist - 0.5
    dist[dist == 0] = -0.0
    want = _loop_reference(dist, qid, gid, qc, gc)
    _assert_same(rank_metrics(dist, qid, gid, qc, gc, chunk_size=6), want)
    d = torch.from_numpy(dist)
    match = torch.from_numpy(qid[:, None] == gid[None, :])
    exclude = match & torch.from_numpy(qc[:, None] == gc[None, :])
    rows, ranks = chunk_ranks(d, match & ~exclude, exclude, "test")
    first = np.full(len(qid), -1)
    for r, k in zip(rows.tolist()[::-1], ranks.tolist()[::-1], strict=True):
        first[r] = k
    np.testing.assert_array_equal(first, want["first_match_rank"])


# --- The counting path (rank_metrics on CPU) against the previous full-sort path ----------------


def _assert_identical(got: dict, want: dict) -> None:
    """Every output, per-query arrays included, bit for bit (NaN where the reference has NaN)."""
    assert got.keys() == want.keys()
    for key in want:
        a, b = np.asarray(got[key]), np.asarray(want[key])
        assert a.dtype == b.dtype, key
        np.testing.assert_array_equal(a, b, err_msg=key)


def _tied_case(seed: int, q: int, g: int, n_ids: int, levels: int | None, loo: bool):
    """Coarse distances (many exact ties, also with true matches), ids absent from the gallery,
    single-image identities, cameras; negative values and -0.0 included."""
    rng = np.random.default_rng(seed)
    if loo:
        q = g
    dist = rng.random((q, g)).astype(np.float32)
    if levels is not None:
        dist = (np.floor(dist * levels) / levels - 0.25).astype(np.float32)
        dist[dist == 0] = -0.0
    gid = rng.integers(0, n_ids, g)
    qid = gid.copy() if loo else rng.integers(0, n_ids + 3, q)  # ids >= n_ids: not in gallery
    if loo:
        qid[:3] = n_ids + np.arange(3)  # single-image identities: nothing left after LOO
        gid[:3] = qid[:3]
    gc = rng.integers(0, 3, g)
    qc = gc.copy() if loo else rng.integers(0, 3, q)
    return dist, qid, gid, qc, gc


def _has_tied_match(dist, qid, gid) -> bool:
    """Some true match shares its distance with another gallery item of its row."""
    for i in range(dist.shape[0]):
        for c in np.flatnonzero(gid == qid[i]):
            if np.count_nonzero(dist[i] == dist[i, c]) > 1:
                return True
    return False


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("levels", [None, 3, 7])
@pytest.mark.parametrize("cams", [False, True])
@pytest.mark.parametrize("loo", [False, True])
def test_counting_equals_sort_path(seed: int, levels: int | None, cams: bool, loo: bool) -> None:

    dist, qid, gid, qc, gc = _tied_case(seed, q=37, g=90, n_ids=14, levels=levels, loo=loo)
    cam_args = (qc, gc) if cams else (None, None)
    if levels is not None:
        assert _has_tied_match(dist, qid, gid)  # the tie-break path is exercised
    for chunk, threads, max_rank in ((None, 1, 10), (5, 2, 20), (1, 3, 3)):
        kw = dict(leave_one_out=loo, max_rank=max_rank, chunk_size=chunk, n_threads=threads)
        want = rank_metrics(dist, qid, gid, *cam_args, **kw, ranking="sort")
        assert want["n_skipped_queries"] > 0  # queries with no true match left are covered
        _assert_identical(rank_metrics(dist, qid, gid, *cam_args, **kw), want)
    if cams:
        plain = rank_metrics(dist, qid, gid, leave_one_out=loo)
        assert plain["mAP"] != want["mAP"]  # the camera filter changed something


@pytest.mark.parametrize("force", ["compare", "sort"])
def test_counting_both_count_methods(monkeypatch, force: str) -> None:
    """The two ways of counting candidates (compare passes, sort + binary search) agree."""
    from indivaid_core.evaluate import ranking

    if force == "compare":
        monkeypatch.setattr(ranking, "_SORT_BELOW_PER_MATCH", 0)
        monkeypatch.setattr(ranking, "_SORT_FROM_MATCHES", 10**9)
    else:
        monkeypatch.setattr(ranking, "_SORT_BELOW_PER_MATCH", 10**9)
    for levels, cams, loo in ((None, False, False), (4, True, False), (3, True, True)):
        dist, qid, gid, qc, gc = _tied_case(9, q=25, g=120, n_ids=6, levels=levels, loo=loo)
        cam_args = (qc, gc) if cams else (None, None)
        want = rank_metrics(dist, qid, gid, *cam_args, leave_one_out=loo, ranking="sort")
        _assert_identical(rank_metrics(dist, qid, gid, *cam_args, leave_one_out=loo), want)


def test_counting_tie_break_with_excluded_items() -> None:
    """All distances equal, so ranks are gallery order among the kept items. Query (id 1,
    camera 0): column 1 is the same id and camera (removed), columns 3 and 4 are true matches
    at kept positions 3 and 4; in leave-one-out the own column is removed as well."""
    dist = np.zeros((1, 5), dtype=np.float32)
    got = rank_metrics(dist, [1], [0, 1, 0, 1, 1], [0], [0, 0, 1, 1, 1], max_rank=5)
    np.testing.assert_array_equal(got["first_match_rank"], [3])
    np.testing.assert_allclose(got["ap"], [(1 / 3 + 2 / 4) / 2])
    np.testing.assert_allclose(got["inp"], [2 / 4])
    np.testing.assert_allclose(got["cmc"], [0, 0, 1, 1, 1])
    ids, cams = [0, 1, 1, 0, 1], [0, 0, 1, 1, 1]
    loo = rank_metrics(np.zeros((5, 5), dtype=np.float32), ids, ids, cams, cams, True)
    # Row 0 (id 0, cam 0): kept 1, 2, 3, 4 (3 is id 0 on camera 1) -> match 3 at rank 3.
    # Row 1 (id 1, cam 0): kept 0, 2, 3, 4 -> matches 2 and 4 at ranks 2 and 4.
    # Row 4 (id 1, cam 1): kept 0, 1, 3 (2 is same camera) -> match 1 at rank 2.
    np.testing.assert_array_equal(loo["first_match_rank"], [3, 2, 2, 1, 2])
    np.testing.assert_allclose(loo["ap"][1], (1 / 2 + 2 / 4) / 2)
    _assert_same(loo, _loop_reference(np.zeros((5, 5)), ids, ids, cams, cams, loo=True))


def test_counting_float64_and_gallery_smaller_than_max_rank() -> None:

    dist, qid, gid, qc, gc = _tied_case(4, q=20, g=8, n_ids=4, levels=3, loo=False)
    for d in (dist, dist.astype(np.float64), torch.from_numpy(dist).half()):
        want = rank_metrics(d, qid, gid, qc, gc, max_rank=12, ranking="sort")
        got = rank_metrics(d, qid, gid, qc, gc, max_rank=12)
        _assert_identical(got, want)
        assert got["cmc"].shape == (12,) and got["cmc"][-1] == 1.0


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distance_rows_equal_pairwise_distance(metric: str) -> None:
    """The counting path's chunked distances are pairwise_distance's, bit for bit (the gallery
    side is built once); galleries of at most 25 fall back to pairwise_distance itself."""
    from indivaid_core.evaluate.metrics import _distance_rows, pairwise_distance

    g = torch.Generator().manual_seed(1)
    qf = torch.randn(50, 24, generator=g)
    for n_gallery in (300, 20):
        gf = torch.randn(n_gallery, 24, generator=g)
        gf[5] = qf[3]  # a zero distance (the matmul form clamps at 0 before the sqrt)
        rows = _distance_rows(qf, gf, metric)
        for step in (1, 7, 41, 50):
            for s in range(0, 50, step):
                e = min(s + step, 50)
                got = rows(s, e).clone()  # the buffer is reused by the next call
                assert torch.equal(got, pairwise_distance(qf[s:e], gf, metric)), (n_gallery, s)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_from_features_counting_equals_sort_path(metric: str) -> None:

    g = torch.Generator().manual_seed(2)
    qf, gf = torch.randn(45, 8, generator=g), torch.randn(160, 8, generator=g)
    gf[10:20] = gf[0]  # exact distance ties among gallery items
    qf[4] = gf[0]
    qid = torch.randint(0, 30, (45,), generator=g).numpy()
    gid = torch.randint(0, 25, (160,), generator=g).numpy()
    qc = torch.randint(0, 2, (45,), generator=g).numpy()
    gc = torch.randint(0, 2, (160,), generator=g).numpy()
    for chunk in (None, 1, 16):
        for cams in ((None, None), (qc, gc)):
            kw = dict(metric=metric, chunk_size=chunk, progress=False)
            want = rank_metrics_from_features(qf, gf, qid, gid, *cams, **kw, ranking="sort")
            _assert_identical(rank_metrics_from_features(qf, gf, qid, gid, *cams, **kw), want)
    kw = dict(leave_one_out=True, metric=metric, chunk_size=32, progress=False)
    want = rank_metrics_from_features(gf, gf, gid, gid, gc, gc, **kw, ranking="sort")
    _assert_identical(rank_metrics_from_features(gf, gf, gid, gid, gc, gc, **kw), want)
