"""Feature extraction/storage, results files and figures on tiny data."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from indivaid_core.evaluate import (  # noqa: E402
    cmc_curve_frame,
    condition_bars,
    distance_distributions,
    embedding_map,
    extract_features,
    load_features,
    per_query_frame,
    rank_metrics,
    retrieval_grid,
    save_features,
    summarise,
    write_metrics_json,
)


class _Images(Dataset):
    def __init__(self, n: int):
        self.x = torch.randn(n, 3, 4, 6, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "index": i}


class _Encoder(torch.nn.Module):
    """Linear 'global' and 'proj' heads; flip-sensitive so flip TTA changes the output."""

    def __init__(self):
        super().__init__()
        self.g = torch.nn.Linear(72, 5)
        self.p = torch.nn.Linear(5, 3)
        self.bn = torch.nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> dict:
        g = self.g(x.flatten(1))
        return {"global": g, "proj": self.p(g), "global_bn": self.bn(g), "proj_bn": self.p(g) * 2}


def _expected(enc: _Encoder, x: torch.Tensor, flip: bool) -> torch.Tensor:
    def cat(t):
        o = enc(t)
        return torch.cat([o["global"], o["proj"]], 1)

    f = (cat(x) + cat(x.flip(3))) / 2 if flip else cat(x)
    return torch.nn.functional.normalize(f, dim=1)


@pytest.mark.parametrize("flip", [False, True])
def test_extract_features_concat_order_and_flip(flip: bool) -> None:
    torch.manual_seed(0)
    enc, ds = _Encoder(), _Images(10)
    enc.train()
    loader = DataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1))
    feats = extract_features(enc, loader, device="auto", flip=flip)
    assert enc.training  # restored after evaluation in eval mode
    enc.eval()
    with torch.no_grad():
        want = _expected(enc, ds.x, flip)
    assert feats.shape == (10, 8) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    proj = extract_features(enc.forward, loader, device="cpu", feature="proj")
    assert proj.shape == (10, 3)


def test_extract_features_errors_name_the_problem() -> None:
    enc = _Encoder()
    loader = DataLoader(_Images(4), batch_size=2)
    with pytest.raises(KeyError, match="'proj'"):
        extract_features(lambda x: {"global": enc(x)["global"]}, loader)
    with pytest.raises(ValueError, match="unknown feature"):
        extract_features(enc, loader, feature="nope")
    with pytest.raises(ValueError, match=r"never yielded table rows \[4, 5\]"):
        extract_features(enc, loader, n_rows=6)


def test_save_load_features_keeps_rows_paired(tmp_path) -> None:
    table = pd.DataFrame({"image_id": ["c", "a", "b"]})
    feats = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    path = tmp_path / "f" / "feats.npz"
    save_features(path, feats, table)
    got, ids = load_features(path)
    assert ids.tolist() == ["c", "a", "b"] and torch.equal(got, feats)
    got, ids = load_features(path, pd.DataFrame({"image_id": ["a", "b", "c"]}))
    assert ids.tolist() == ["a", "b", "c"] and got[:, 0].tolist() == [2.0, 4.0, 0.0]
    with pytest.raises(KeyError, match="lacks features for image_id"):
        load_features(path, pd.DataFrame({"image_id": ["zz"]}))
    with pytest.raises(ValueError, match="do not fit"):
        save_features(path, feats[:2], table)


def test_features_of_other_weights_are_refused(tmp_path) -> None:
    """Robustness reuses the evaluation's features: a stage 2 retrained since must not pass."""
    table = pd.DataFrame({"image_id": ["a", "b"]})
    path = tmp_path / "feats.npz"
    save_features(path, torch.rand(2, 4), table, model_sha256="a" * 64)
    assert load_features(path, table, "a" * 64)[0].shape == (2, 4)
    with pytest.raises(ValueError, match="features of another model"):
        load_features(path, table, "b" * 64)
    save_features(path, torch.rand(2, 4), table)  # no model recorded: refused when one is asked
    with pytest.raises(ValueError, match="not recorded"):
        load_features(path, table, "a" * 64)


def _metrics_and_table():
    dist = np.array([[0.1, 0.5, 0.3], [0.4, 0.2, 0.3], [0.2, 0.3, 0.1]], dtype=np.float32)
    m = rank_metrics(dist, ["a", "b", "zz"], ["a", "b", "a"], max_rank=3)
    table = pd.DataFrame(
        {
            "image_id": ["q0", "q1", "q2"],
            "identity": ["a", "b", "zz"],
            "daynight": ["day", "night", "day"],
        }
    )
    return m, table


def test_results_files(tmp_path) -> None:
    m, table = _metrics_and_table()
    path = tmp_path / "m" / "metrics.json"
    write_metrics_json(
        path, {"zeta": 1 / 3, "alpha": np.float32(0.5), **summarise(m, (1, 3)), "nan": np.nan}
    )
    text = path.read_text()
    data = json.loads(text)
    assert list(data) == sorted(data) and data["zeta"] == 0.333333 and data["nan"] is None
    assert data["mAP"] == 1.0 and data["n_skipped_queries"] == 1
    write_metrics_json(path, json.loads(text))
    assert path.read_text() == text  # byte-stable
    pq = per_query_frame(m, table)
    assert list(pq.columns) == [
        "image_id",
        "identity",
        "ap",
        "inp",
        "first_match_rank",
        "valid",
        "daynight",
    ]
    assert pq["valid"].tolist() == [True, True, False] and pq["first_match_rank"].tolist() == [
        1,
        1,
        -1,
    ]
    cmc = cmc_curve_frame(m["cmc"])
    assert cmc["rank"].tolist() == [1, 2, 3] and np.allclose(cmc["cmc"], 1.0)
    with pytest.raises(ValueError, match="metrics cover 3 queries"):
        per_query_frame(m, table.iloc[:2])


def _spine_colour(ax) -> str:
    return mcolors.to_hex(ax.spines["top"].get_edgecolor())


def test_retrieval_grid_colours_match_identity(tmp_path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 6, 3), 40 * i, dtype=np.uint8)).save(p)
        paths.append(p)
    ids = ["a", "a", "b", "b", "a"]
    dist = np.array([[abs(i - j) for j in range(5)] for i in range(5)], dtype=np.float32)
    fig = retrieval_grid(paths, paths, dist, ids, ids, k=2, n_queries=2, leave_one_out=True)
    axes = np.array(fig.axes).reshape(2, 3)
    assert len(fig.axes) == 6
    # Query 0: neighbours 1 (a, green) then 2 (b, red). Query 4: 3 (b, red) then 2 (b, red).
    green, red = mcolors.to_hex("tab:green"), mcolors.to_hex("tab:red")
    assert [_spine_colour(ax) for ax in axes[0, 1:]] == [green, red]
    assert [_spine_colour(ax) for ax in axes[1, 1:]] == [red, red]
    assert not axes[0, 0].spines["top"].get_visible()
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        retrieval_grid([tmp_path / "missing.png"], paths[:1], dist[:1, :1], ["a"], ["a"], k=1)


def test_distance_distribution_embedding_and_condition_figures() -> None:
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(4), 6)
    feats = rng.normal(size=(4, 8))[ids] + 0.1 * rng.normal(size=(24, 8))
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    fig = distance_distributions(dist, ids, ids, leave_one_out=True, bins=10)
    (ax,) = fig.axes
    assert len(ax.patches) == 20
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"negative (n={24 * 18})", f"positive (n={24 * 5})"]
    plt.close(fig)

    fig = embedding_map(feats, ids, perplexity=5)
    assert len(fig.axes[0].collections) == 4  # one scatter per identity
    plt.close(fig)

    df = pd.DataFrame(
        {
            "ap": [1.0, 0.5, 0.2, np.nan],
            "first_match_rank": [1, 2, 1, -1],
            "valid": [True] * 3 + [False],
            "daynight": ["day", "day", "night", "night"],
        }
    )
    fig = condition_bars(df, "daynight")
    bars = fig.axes[0].containers[0]
    assert [b.get_height() for b in bars] == pytest.approx([0.75, 0.2])
    assert [t.get_text() for t in fig.axes[0].texts] == ["n=2", "n=1"]
    plt.close(fig)
    fig = condition_bars(df, "daynight", metric="rank1")
    assert [b.get_height() for b in fig.axes[0].containers[0]] == pytest.approx([0.5, 1.0])
    plt.close(fig)
    with pytest.raises(KeyError, match="no column 'camera'"):
        condition_bars(df, "camera")


class _ConvEncoder(torch.nn.Module):
    """A conv + BN trunk, where NHWC takes other kernels than NCHW."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, groups=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> dict:
        g = self.bn(self.dw(self.conv(x))).mean((2, 3))
        return {"global": g, "proj": g[:, :4]}


def test_channels_last_features_equal_the_nchw_ones() -> None:
    torch.manual_seed(0)
    enc = _ConvEncoder().eval()
    loader = DataLoader(_Images(7), batch_size=3)
    nchw = extract_features(enc, loader, device="cpu")
    enc.to(memory_format=torch.channels_last)
    nhwc = extract_features(enc, loader, device="cpu", channels_last=True)
    torch.testing.assert_close(nhwc, nchw, atol=1e-5, rtol=0)
