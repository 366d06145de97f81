"""The synthetic suite: deterministic, identity only in the pattern, flanks differ."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from indivaid_core.data import load_dataset, load_rgb, prepare_table, validate_table
from indivaid_core.repro.bodies import Pose, render_body
from indivaid_core.repro.patterns import PATTERN_KINDS, sample_pattern
from indivaid_core.repro.synthetic import PRESETS, generate_suite, main, tiny_preset

SMALL = dict(image_size=40, jpeg_quality=85)


def _tiny(name, n=3, k=2):
    return {name: tiny_preset(name, n, k)}


def _bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.*"))}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    presets = {**_tiny("synth-stoat"), **_tiny("synth-seastar")}
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_suite(tmp_path / out, list(presets), seed=seed, overrides=presets, **SMALL)
    a, b, c = (_bytes(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 2 * (1 + 3 * 2)  # metadata + 6 JPEGs per preset
    assert a.keys() == c.keys() and a != c


def test_metadata_follows_the_contract(tmp_path):
    presets = _tiny("synth-tiger", 4, 3)
    df = generate_suite(tmp_path, ["synth-tiger"], overrides=presets, **SMALL)["synth-tiger"]
    for col in (
        "image_id",
        "identity",
        "path",
        "date",
        "species",
        "camera",
        "viewpoint",
        "daynight",
        "occlusion",
        "bbox",
    ):
        assert col in df
    assert set(df.viewpoint) <= {"left", "right"} and set(df.daynight) <= {"day", "night"}
    assert set(df.occlusion) <= {"none", "low", "high"}
    pd.to_datetime(df.date)
    table, root = load_dataset("wildlife_csv", "synth-tiger/metadata.csv", tmp_path)
    validate_table(table, root)
    img = load_rgb(root / table.path[0])
    assert img.size == (40, 40)


def test_scale_adds_identities_without_changing_existing_ones(tmp_path):
    p = dataclasses.replace(tiny_preset("synth-stoat", 2, 2))
    small = generate_suite(tmp_path / "s", ["x"], overrides={"x": p}, **SMALL)["x"]
    big = generate_suite(tmp_path / "b", ["x"], scale=2, overrides={"x": p}, **SMALL)["x"]
    assert big.identity.nunique() == 2 * small.identity.nunique()
    for path in small.path:
        assert (tmp_path / "s/x" / path).read_bytes() == (tmp_path / "b/x" / path).read_bytes()


def test_regenerating_smaller_removes_stale_images(tmp_path):
    p = tiny_preset("synth-stoat", 3, 2)
    generate_suite(tmp_path, ["x"], scale=2, overrides={"x": p}, **SMALL)
    df = generate_suite(tmp_path, ["x"], overrides={"x": p}, **SMALL)["x"]
    assert len(list((tmp_path / "x/images").glob("*.jpg"))) == len(df)


def test_unknown_preset(tmp_path):
    with pytest.raises(KeyError, match="synth-tigre"):
        generate_suite(tmp_path, ["synth-tigre"])


@pytest.mark.parametrize("kind", PATTERN_KINDS)
def test_patterns_are_stable_per_individual_and_differ_between(kind):
    v, u = np.mgrid[0:1:64j, 0:1:128j]
    if kind == "spots":
        u, v = 2 * u - 1, 2 * v - 1
    a1 = sample_pattern(kind, np.random.default_rng(5))(u.ravel(), v.ravel())
    a2 = sample_pattern(kind, np.random.default_rng(5))(u.ravel(), v.ravel())
    b = sample_pattern(kind, np.random.default_rng(6))(u.ravel(), v.ravel())
    assert np.array_equal(a1, a2)
    assert a1.min() >= 0 and a1.max() <= 1 and 0.02 < a1.mean() < 0.98
    assert np.abs(a1 - b).mean() > 0.05


def test_identity_lives_in_the_pattern_only():
    """Same pose, two individuals: pixels differ only on the trunk; flanks carry
    different patterns."""
    preset = PRESETS["synth-tiger"]
    y, x = np.mgrid[-0.6:0.6:200j, -0.7:0.7:240j]
    rng = np.random.default_rng(0)
    left, right, other = (sample_pattern("stripes", rng) for _ in range(3))
    pose = Pose()
    m1, c1 = render_body(x, y, preset.shape, pose, right, preset.palette)
    m2, c2 = render_body(x, y, preset.shape, pose, other, preset.palette)
    _, c3 = render_body(x, y, preset.shape, pose, left, preset.palette)
    assert np.array_equal(m1, m2)  # the silhouette does not depend on the individual
    a, half_height = 0.5, 0.5 / preset.shape.aspect
    differs = np.abs(c1 - c2).sum(axis=2) > 1e-9
    assert differs.any()
    assert (np.abs(x[differs]) < a).all() and (np.abs(y[differs]) <= half_height + 1e-9).all()
    assert np.abs(c1 - c3).mean() > 0.01  # left and right flanks differ


def test_conditions_are_independent_of_identity(tmp_path):
    """Cameras, viewpoints and day/night are drawn per photo, not per individual."""
    p = dataclasses.replace(tiny_preset("synth-tiger", 6, 6), n_cameras=3)
    df = generate_suite(tmp_path, ["x"], overrides={"x": p}, image_size=24)["x"]
    per_id = df.groupby("identity").agg({"camera": "nunique", "viewpoint": "nunique"})
    assert (per_id.camera > 1).mean() > 0.5 and (per_id.viewpoint > 1).any()


def test_presets_and_protocols_are_consistent(tiny_table):
    assert {"synth-stoat", "synth-tiger", "synth-seastar"} <= set(PRESETS)
    assert PRESETS["synth-stoat"].protocol == "leave_one_out"
    assert PRESETS["synth-tiger"].viewpoints == ("left", "right")
    assert PRESETS["synth-seastar"].nuisance.underwater > 0
    df, root = tiny_table
    out = prepare_table(df, PRESETS["synth-tiger"].protocol, 0.4, 1, 0, root, check_images=False)
    assert {"train", "query", "gallery"} == set(out.split)


def test_cli(tmp_path, capsys, monkeypatch):
    import indivaid_core.repro.synthetic as synth

    monkeypatch.setitem(synth.PRESETS, "synth-stoat", tiny_preset("synth-stoat", 2, 2))
    main(["--out", str(tmp_path), "--presets", "synth-stoat", "--image-size", "32"])
    assert "synth-stoat: 2 individuals, 4 images" in capsys.readouterr().out
    assert (tmp_path / "synth-stoat" / "metadata.csv").is_file()
