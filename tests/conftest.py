"""Shared fixtures.

`tiny_suite` (session scope): a synthetic tiger set of 5 individuals x 3 photos at 48 px,
generated once per test session into a temporary folder. It yields `(df, root)`: `df` is the
wildlife-format table read from `<root>/metadata.csv` (image_id, identity, path, date, species,
camera, viewpoint, daynight, occlusion, bbox, background, pattern, coat_*, caption), `path`
relative to `root`. Read-only: tests that
modify the table or files should use `tiny_table` (a fresh copy of the table) or copy the files.
`tiny_table` (function scope): `(df.copy(), root)` of the same suite.
`smoke_cfg` (session scope): the repository's params.yaml under its `smoke` profile (a tiny
random ViT), the one tiny config the tests build models from.
`tiny_repo` (module scope): the toy training repository of `toy_repo.py`, prepared;
`in_repo` runs the test inside it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import toy_repo

from indivaid_core import config
from indivaid_core.config import Config
from indivaid_core.repro.synthetic import generate_preset, tiny_preset

REPO = Path(__file__).resolve().parents[1]

TINY_IDENTITIES = 5
TINY_IMAGES = 3
TINY_SIZE = 48


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("tiny_suite") / "synth-tiger"
    generate_preset(
        root, tiny_preset("synth-tiger", TINY_IDENTITIES, TINY_IMAGES), image_size=TINY_SIZE
    )
    df = pd.read_csv(root / "metadata.csv", dtype={"identity": str, "image_id": str})
    return df, root


@pytest.fixture
def tiny_table(tiny_suite) -> tuple[pd.DataFrame, Path]:
    df, root = tiny_suite
    return df.copy(), root


@pytest.fixture(scope="session")
def smoke_cfg() -> Config:
    return config.load(REPO / "params.yaml", {"profile": "smoke"})


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return toy_repo.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def in_repo(tiny_repo, monkeypatch) -> Path:
    monkeypatch.chdir(tiny_repo)
    return tiny_repo
