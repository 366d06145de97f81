"""Identify as a field ecologist runs it (issue 31): from an empty folder with the packaged
settings, answers a person can act on, nothing replaced by surprise, a review page checked in a
real headless Chromium whose exported decisions go back in with `index add`, and a gallery that
skips photos it already holds and questions look-alike names."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from indivaid_core import cli, config
from indivaid_core.identify import api, confidence, present
from indivaid_core.identify.demo import random_export
from indivaid_core.identify.grow import SimilarNameWarning, name_key
from indivaid_core.identify.index import GalleryIndex


@pytest.fixture(scope="module")
def user(tmp_path_factory, tiny_suite, smoke_cfg):
    """A user's folder: identity folders, new photos, a model, and an index built from it."""
    root = tmp_path_factory.mktemp("review")
    table, images = tiny_suite
    for i, row in table.iterrows():
        src = images / row["path"]
        dest = root / ("photos" if i % 3 == 0 else f"gallery/{row['identity']}")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest / f"{row['image_id']}.jpg")
    random_export(root / "model", smoke_cfg.model, sorted(table["identity"].unique()), seed=0)
    args = ["index", "build", "--checkpoint", "model", "--images", "gallery", "--out", "idx"]
    assert main_in(root, *args, "--threshold", "1.0") == 0
    return root


def main_in(cwd: Path, *args: str | Path) -> int:
    """`indivaid ARGS --device cpu` run in-process from `cwd` (as a user's shell would)."""
    import os

    before = Path.cwd()
    os.chdir(cwd)
    try:
        return cli.main([*map(str, args), "--device", "cpu"])
    finally:
        os.chdir(before)


def test_packaged_settings_need_no_params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: no params.yaml
    assert config.load_settings(None).profile == "default"
    assert config.load_settings(None, {"profile": "smoke"}).profile == "smoke"
    assert config.load_settings(None, {"stage2.epochs": 3}).stage2.epochs == 3
    with pytest.raises(config.ConfigError, match="nope.yaml: settings file not found"):
        config.load_settings("nope.yaml")


def test_readme_commands_from_an_empty_folder(user, tmp_path):
    """train -> index build -> identify, relative paths, no params.yaml, in a fresh folder."""
    shutil.copytree(user / "gallery", tmp_path / "photos")
    shutil.copytree(user / "photos", tmp_path / "new_photos")
    quick = ["--set", "profile=smoke", "--set", "stage2.epochs=1", "--set", "stage1.epochs=1"]
    steps = [
        ["train", "--images", "photos", "--out", "runs/mine", "--species", "tiger", *quick],
        ["index", "build", "--checkpoint", "runs/mine/model", "--images", "photos"]
        + ["--out", "mine.index"],
        ["identify", "--index", "mine.index", "new_photos/", "--top-k", "3"]
        + ["--out", "results.csv"],
    ]
    for step in steps:
        done = subprocess.run(
            [sys.executable, "-m", "indivaid_core.cli", *step],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert "photo" in done.stdout and "flagged new" in done.stdout
    assert (tmp_path / "results.html").is_file()
    gallery = pd.read_csv(tmp_path / "mine.index" / "gallery.csv")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in gallery["path"])
    assert gallery["sha256"].str.len().eq(64).all()


def test_answers_rounded_flagged_new_and_never_overwritten(user, capsys):
    rc = main_in(user, "identify", "--index", "idx", "photos", "--threshold", "0", "--top-k", "2")
    out = capsys.readouterr().out
    assert rc == 0
    res = pd.read_csv(user / "results.csv", keep_default_na=False)
    assert len(res) == 5 and (res["predicted_identity"] == "new").all()  # threshold 0: all new
    assert res["top1_identity"].str.startswith("tiger").all()  # candidates keep their names
    assert (res["threshold"] == 0).all()
    digits = res["top2_distance"].astype(str).str.split(".").str[1].str.len()
    assert digits.max() <= 3 and res["distance"].between(0, 2).all()
    for q in res["query"]:
        assert Path(q).name in out
    assert "new individual? nearest tiger" in out and "5 flagged new" in out

    before = (user / "results.csv").read_bytes()
    rc = main_in(user, "identify", "--index", "idx", "photos/" + Path(res["query"][0]).name)
    err = capsys.readouterr().err
    assert rc == 2 and "results.csv: already exists" in err and "--force" in err
    assert (user / "results.csv").read_bytes() == before
    rc = main_in(user, "identify", "--index", "idx", "photos", "--force", "--threshold", "99")
    assert rc == 0 and "0 flagged new" in capsys.readouterr().out
    res = pd.read_csv(user / "results.csv", keep_default_na=False)
    assert (res["predicted_identity"] == res["top1_identity"]).all()


def test_answers_table_is_short():
    frame = pd.DataFrame(
        {
            "query": [f"/x/p{i}.jpg" for i in range(25)],
            "predicted_identity": ["a"] * 24 + ["new"],
            "top1_identity": ["a"] * 25,
            "distance": [0.123456] * 25,
            "error": [""] * 25,
        }
    )
    text = present.answers_table(frame, limit=20, csv="results.csv")
    lines = text.splitlines()
    assert len(lines) == 22 and lines[1].startswith("p0.jpg") and "a (0.123)" in lines[1]
    frame["confidence"] = 0.834
    assert "a (0.123, 83% sure)" in present.answers_table(frame)
    assert lines[-1] == "... and 5 more photos in results.csv"
    assert "new individual? nearest a" in present.answers_table(frame.tail(1))


def chromium(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is missing: run scripts/setup.sh (apt-get install -y chromium)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return subprocess.run(
        [exe, *flags, *args], capture_output=True, text=True, timeout=timeout, check=True
    )


def test_review_page_in_chromium_round_trips_through_index_add(user, tmp_path, capsys):
    out = tmp_path / "review" / "results.csv"
    out.parent.mkdir()
    args = ["identify", "--index", "idx", "photos", "--top-k", "3", "--out", out]
    assert main_in(user, *args, "--json") == 0
    assert json.loads(capsys.readouterr().out)["page"] == str(out.with_suffix(".html"))
    page = out.with_suffix(".html")
    text = page.read_text()
    assert "file://" not in text and "http" not in text.split("<script")[0]  # self-contained
    assert text.count("data:image/jpeg;base64,") >= 5

    profile = tmp_path / "chrome"
    dom = chromium(f"--user-data-dir={profile}", "--dump-dom", page.as_uri() + "#selftest").stdout
    n_rows = len(re.findall(r'<section class="query-row', dom))
    assert n_rows == len(pd.read_csv(out)) == 5
    assert dom.count("<img") >= 5 * 2  # the query and at least one photo per candidate
    csv_text = html.unescape(re.search(r'<pre id="selftest-csv"[^>]*>(.*?)</pre>', dom, re.S)[1])
    filtered = int(re.search(r'<pre id="selftest-csv" data-filtered="(\d+)"', dom)[1])
    assert 1 <= filtered <= n_rows
    reviewed = pd.read_csv(io.StringIO(csv_text))
    assert list(reviewed.columns) == ["identity", "path", "decision", "query"]
    assert list(reviewed["decision"]) == ["accept", "new", "accept", "new"]  # 3rd: rejected
    assert reviewed["path"].map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()
    shot = tmp_path / "review_page.png"  # pytest keeps the last runs' tmp folders to look at
    chromium(
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        "--window-size=1280,900",
        page.as_uri(),
    )
    assert shot.stat().st_size > 10_000

    (tmp_path / "reviewed.csv").write_text(csv_text)
    n_before = len(GalleryIndex.load(user / "idx").gallery)
    add = ["index", "add", "idx", "--images", tmp_path / "reviewed.csv", "--allow-outside-root"]
    assert "index add idx --images reviewed.csv --allow-outside-root" in text
    assert main_in(user, *add) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_added"] == 4 and report["n_skipped_already_indexed"] == 0
    gallery = GalleryIndex.load(user / "idx").gallery
    assert len(gallery) == n_before + 4 and {"newcomer 1", "newcomer 4"} <= set(gallery["identity"])
    assert main_in(user, *add) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_added"] == 0 and report["n_skipped_already_indexed"] == 4


def test_index_add_skips_known_content_and_questions_lookalike_names(user, tmp_path):
    index, model = api.open_index(user / "idx", device="cpu")
    known = index.gallery["identity"].iloc[0]
    copy = tmp_path / "more" / "someone_else" / "renamed.jpg"
    copy.parent.mkdir(parents=True)
    shutil.copy(index.gallery["path"].iloc[0], copy)  # same bytes, other name and identity
    (tmp_path / "more" / known.upper()).mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "more" / known.upper() / "x.jpg")  # a new photo
    n = len(index.gallery)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = api.add_to_index(index, model, tmp_path / "more")
    assert report["n_skipped"] == 1 and report["n_added"] == 1 and len(index.gallery) == n + 1
    similar = [str(w.message) for w in caught if issubclass(w.category, SimilarNameWarning)]
    assert len(similar) == 1 and f"did you mean '{known}'" in similar[0]
    assert name_key("T-101 raja") == name_key("T-101  Raja") == name_key("Ｔ-101 Raja")
    assert name_key("T-101 Raja") != name_key("T-102 Raja")


def test_confidence_is_calibrated_on_held_out_photos():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 16))
    ids = np.repeat(np.arange(40), 6)
    x = centres[ids] + 0.9 * rng.standard_normal((len(ids), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fit = confidence.fit_confidence(x, ids, seed=0)
    assert fit["method"] == "platt" and 0 <= fit["ece"] < 0.15 and fit["n"] > 200
    assert 0.1 < fit["heldout_accuracy"] < 0.95  # both outcomes seen
    near, far = confidence.predict(fit, np.array([0.2, 1.2]), np.array([0.9, 1.25]))
    assert near > 0.8 and far < near  # close and clear of the runner-up: confident
    p = rng.uniform(size=4000)
    assert confidence.expected_calibration_error(p, rng.uniform(size=4000) < p) < 0.05
    assert confidence.expected_calibration_error(
        np.full(100, 0.9), np.zeros(100, bool)
    ) == pytest.approx(0.9)
    tiny = confidence.fit_confidence(x[:6], ids[:6])
    assert tiny["method"] == "none" and "at least 3" in tiny["reason"]


def test_page_text_that_looks_like_a_placeholder_stays_text():
    from indivaid_core.identify.review_page import render

    frame = pd.DataFrame(columns=["query", "path", "predicted_identity", "error"])
    gallery = pd.DataFrame(columns=["identity", "path"])
    page = render(frame, gallery, None, "title __DATA__ <b>", index_path="/x/__SCRIPT__")
    assert "title __DATA__ &lt;b&gt;" in page and "/x/__SCRIPT__" in page
    assert page.count('id="data"') == 1


def test_most_doubtful_is_nearest_to_changing_its_answer():
    from indivaid_core.identify.review_page import doubt

    thr = 0.5
    rows = {
        "named, just inside the threshold": {"distance": 0.49, "top2_distance": 0.8},
        "named, close runner-up": {"distance": 0.30, "top2_distance": 0.33},
        "flagged new, two far candidates tied": {"distance": 0.90, "top2_distance": 0.90},
        "named, clear": {"distance": 0.20, "top2_distance": 0.70},
        "unreadable": {"distance": None, "error": "cannot read"},
    }
    got = {name: doubt(pd.Series(r), thr) for name, r in rows.items()}
    assert got["named, just inside the threshold"] == pytest.approx(0.01)
    assert got["named, close runner-up"] == pytest.approx(0.03)
    assert got["flagged new, two far candidates tied"] == pytest.approx(0.40)  # not the tie
    assert got["named, clear"] == pytest.approx(0.30)
    assert sorted(got, key=got.get) == list(rows)[:2] + ["named, clear"] + list(rows)[2:3] + [
        "unreadable"
    ]
