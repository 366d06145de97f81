"""Adapters: each dataset layout becomes one table (image_id, identity, path, ...) + its root.

Every `from_*` returns `(df, image_root)` with `path` relative to `image_root`.
wildlife-datasets is AGPL-3.0 and heavy, so it is imported lazily and only by
`from_wildlife_class` (and optionally nowhere else); its metadata *format* is read without it.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from indivaid_core.data.images import IMAGE_EXTENSIONS, DataError
from indivaid_core.data.splits import split_identities
from indivaid_core.data.table import check_columns
from indivaid_core.safe_io import restore_formulas

#: `<pid>_<camid>[_<anything>].<ext>`, the names every released reader parses: IndivAID's
#: `0001_-1_3_origin.jpg` (ATRW, FriesianCattle2017, IPanda50, Lion, Nyala, PolarBear, SeaStar),
#: Stoat's `5_CREK_12.jpg`, MPDD's `id_camid_no_origin.jpg`, Market-1501's
#: `0002_c1s1_000451_01.jpg` (pid -1: junk). The camid token stops at the next `_` or `.`.
REID_NAME = re.compile(r"^(?P<pid>-1|\d+)_(?P<cam>-?\d+|[0-9A-Za-z]+)(?:[_.].*)?$")
#: Market-1501's camera token `c<camera>s<sequence>` (or a bare `c<camera>`): the camera number.
MARKET_CAMERA = re.compile(r"^c(?P<cam>\d+)(?:s\d+)?$")
JUNK_PID = "-1"  # Market-1501 / CLIP-ReID: images of no identity, skipped by the readers
REID_SPLITS = (("train", "query", "gallery"), ("train", "test"))
WILDLIFE_CLASSES = (
    "ATRW",
    "FriesianCattle2017",
    "IPanda50",
    "LionData",
    "MPDD",
    "NyalaData",
    "PolarBearVidID",
    "SeaStarReID2023",
)
WILDLIFE_SPLITS = ("closed_set", "open_set", "disjoint_set", "time_aware")
UNKNOWN_IDENTITY = "unknown"  # wildlife-datasets' name for unidentified animals


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name not in ("Thumbs.db", "desktop.ini")


def camera_numbers(tokens: Iterable[str]) -> dict[str, int]:
    """The integer camera of each camid token of one dataset (all splits together).

    Tokens that are integers (`-1` included, as the released readers keep them) or Market-1501
    `c<n>s<m>` (camera n, not n - 1 as CLIP-ReID's Market reader: only equality and order
    matter here) keep their number when every token of the dataset is numeric. If any token is
    a name (Stoat's `CREK`, MPDD's cameras), every distinct token gets its rank 0..n-1, numeric
    tokens first by value, then names in sorted order. This is deterministic and one mapping
    for all splits; the released readers differ (Stoat: five fixed names to 1000..1004, in the
    same order; MPDD: per-folder ids in set-iteration order), which only SIE and the optional
    same-camera filter could see.
    """
    tokens = set(tokens)
    value: dict[str, int | None] = {}
    for t in tokens:
        market = MARKET_CAMERA.match(t)
        value[t] = int(market["cam"]) if market else int(t) if re.fullmatch(r"-?\d+", t) else None
    numbers = {t: v for t, v in value.items() if v is not None}
    if len(numbers) == len(value):
        return numbers
    order = sorted(tokens, key=lambda t: (0, value[t], t) if value[t] is not None else (1, 0, t))
    return {t: i for i, t in enumerate(order)}


def _reid_rows(root: Path, split: str, bad: list[str], junk: list[str]) -> list[dict]:
    """One row per image of `<root>/<split>`; misnamed files go to `bad`, pid -1 to `junk`."""
    rows = []
    for p in sorted((root / split).iterdir()):
        if not _visible(p):
            continue
        rel = p.relative_to(root).as_posix()
        m = REID_NAME.match(p.name)
        if not _is_image(p) or m is None:
            bad.append(rel)
        elif m["pid"] == JUNK_PID:
            junk.append(rel)
        else:
            rows.append(
                {
                    "image_id": rel,
                    "identity": str(int(m["pid"])),
                    "path": rel,
                    "camera": m["cam"],
                    "split": split,
                    "name": p.name,
                }
            )
    return rows


def _merge_same_query_gallery(root: Path, rows: list[dict]) -> list[dict]:
    """Stoat's release: query/ and gallery/ hold the same images, so they are one `test` set.

    Counted once (the query copy; files matched by name), evaluated leave-one-out so that no
    image is its own match. A partial overlap is an error: the shared files would match
    themselves and inflate every metric.
    """
    names = {s: {r["name"] for r in rows if r["split"] == s} for s in ("query", "gallery")}
    shared = names["query"] & names["gallery"]
    if not shared:
        return rows
    if names["query"] != names["gallery"]:
        raise DataError(
            f"{root}: query/ and gallery/ share {len(shared)} file name(s), e.g. "
            f"{sorted(shared)[:5]}, but are not the same set ({len(names['query'])} vs "
            f"{len(names['gallery'])} files); each shared image would match itself. Make them "
            "identical (query == gallery, evaluated leave-one-out) or disjoint"
        )
    kept = [r for r in rows if r["split"] != "gallery"]
    for r in kept:
        if r["split"] == "query":
            r["split"] = "test"
    return kept


def from_reid_folders(root: str | Path) -> tuple[pd.DataFrame, Path]:
    """The released IndivAID / CLIP-ReID layout `<root>/{train,query,gallery}/<pid>_<camid>_*.jpg`.

    `<root>` is one dataset (e.g. `data/IndivAID/Stoat`); `<root>/{train,test}` is accepted for
    query == gallery sets. Names as the released readers parse them (see `REID_NAME`):
    pid becomes `identity` (leading zeros dropped; not relabelled, training does that), the
    camid token `camera` (see `camera_numbers`), the folder `split`. pid -1 (junk) is skipped
    with a warning. When query/ and gallery/ hold the same file names (the released Stoat),
    they become one `test` split, each image once. Any other file in those folders, or a name
    that does not parse, is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    layout = next((s for s in REID_SPLITS if all((root / d).is_dir() for d in s)), None)
    if layout is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"{root}: expected sub-folders train/query/gallery (or train/test), found {found}"
        )
    rows: list[dict] = []
    bad: list[str] = []
    junk: list[str] = []
    for split in layout:
        rows += _reid_rows(root, split, bad, junk)
    if bad:
        raise DataError(
            f"{root}: {len(bad)} file(s) are not images named <pid>_<camid>_<anything>.jpg "
            f"(pid digits or -1, camid an integer or letters and digits): {bad[:10]}"
        )
    if junk:
        warnings.warn(
            f"{root}: skipped {len(junk)} junk image(s) with pid -1: {junk[:5]}", stacklevel=2
        )
    if not rows:
        raise DataError(f"{root}: no images in {list(layout)}")
    rows = _merge_same_query_gallery(root, rows)
    cams = camera_numbers(r["camera"] for r in rows)
    df = pd.DataFrame(rows).drop(columns="name")
    df["camera"] = df["camera"].map(cams).astype(int)
    return df, root


def read_metadata_csv(path: str | Path) -> pd.DataFrame:
    """A metadata CSV whose `identity`, `image_id` and `path` are read as written.

    pandas reads the strings "NA", "None", "null" and "nan" as missing by default, and an
    individual may well be called "NA". Those three columns keep their text; the others keep
    pandas' defaults (an empty bbox is still missing).
    """
    text_cols = ("identity", "image_id", "path")
    head = pd.read_csv(path, nrows=0).columns
    cols = [c for c in text_cols if c in head]
    df = pd.read_csv(path, dtype={c: str for c in cols})
    if cols:
        raw = pd.read_csv(path, usecols=cols, dtype=str, keep_default_na=False, na_values=[""])
        df[cols] = restore_formulas(raw[cols])  # a table this project wrote (gallery.csv)
    return df


def from_wildlife_metadata(
    csv_or_df: str | Path | pd.DataFrame,
    root: str | Path | None = None,
    drop_unknown: bool = True,
) -> tuple[pd.DataFrame, Path]:
    """A wildlife-datasets metadata table (CSV path or DataFrame), `path` relative to `root`.

    `root` defaults to the CSV's folder. A missing `image_id` is created from the row number.
    Rows whose identity is wildlife-datasets' `unknown` are dropped (with a warning) when
    `drop_unknown`, since they can be neither trained on nor scored.
    """
    if isinstance(csv_or_df, pd.DataFrame):
        df, source = csv_or_df.copy(), "metadata DataFrame"
        root = Path(root) if root is not None else Path(".")
    else:
        path = Path(csv_or_df)
        if not path.is_file():
            raise DataError(f"{path}: metadata CSV not found")
        try:
            df = read_metadata_csv(path)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{path}: not a readable CSV ({e})") from e
        source, root = str(path), Path(root) if root is not None else path.parent
    if "image_id" not in df:
        df.insert(0, "image_id", [f"{i:06d}" for i in range(len(df))])
    df = check_columns(df, source)
    if drop_unknown:
        unknown = df["identity"] == UNKNOWN_IDENTITY
        if unknown.any():
            warnings.warn(
                f"{source}: dropped {int(unknown.sum())} images of identity '{UNKNOWN_IDENTITY}'",
                stacklevel=2,
            )
            df = df[~unknown].reset_index(drop=True)
    return df, root


def from_identity_folders(root: str | Path) -> tuple[pd.DataFrame, Path]:
    """One sub-folder per individual, images anywhere below it (bring your own animals).

    Images directly under `root` are an error (whose animal are they?); non-image files are
    skipped with a warning naming them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    loose = sorted(p.name for p in root.iterdir() if _is_image(p) and _visible(p))
    if loose:
        raise DataError(
            f"{root}: image(s) outside any identity sub-folder: {loose[:10]}; put each "
            "individual's images in <root>/<identity>/"
        )
    rows, skipped, broken = [], [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        for p in sorted(d.rglob("*")):
            if p.is_symlink() and not p.exists():
                broken.append(p.relative_to(root).as_posix())
                continue
            if not p.is_file() or not _visible(p):
                continue
            rel = p.relative_to(root).as_posix()
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(rel)
                continue
            rows.append({"image_id": rel, "identity": d.name, "path": rel})
    if skipped:
        warnings.warn(
            f"{root}: skipped {len(skipped)} non-image file(s): {skipped[:10]}", stacklevel=2
        )
    if broken:
        warnings.warn(
            f"{root}: skipped {len(broken)} broken link(s) (their target is missing): "
            f"{broken[:10]}",
            stacklevel=2,
        )
    if not rows:
        raise DataError(f"{root}: no images in per-identity sub-folders")
    return pd.DataFrame(rows), root


def from_wildlife_class(name: str, root: str | Path) -> tuple[pd.DataFrame, Path]:
    """A wildlife-datasets dataset class by name, on data already downloaded into `root`.

    Needs the optional extra: `pip install indivaid-core[wildlife]` (AGPL-3.0).
    """
    if name not in WILDLIFE_CLASSES:
        near = difflib.get_close_matches(name, WILDLIFE_CLASSES, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise DataError(
            f"unknown wildlife-datasets class '{name}'{hint} (known: {list(WILDLIFE_CLASSES)})"
        )
    try:
        from wildlife_datasets import datasets as wd
    except ImportError as exc:
        raise ImportError(
            f"reading '{name}' needs wildlife-datasets: pip install indivaid-core[wildlife] "
            "(an optional extra, AGPL-3.0)"
        ) from exc
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder for wildlife-datasets class '{name}' not found")
    ds = getattr(wd, name)(str(root))
    return from_wildlife_metadata(ds.df, root)


def _test_side(
    df: pd.DataFrame, test: np.ndarray, query_per_identity: int, seed: int, test_split: str
) -> pd.DataFrame:
    out = df.copy()
    out["split"] = np.where(test, "test", "train")
    if test_split == "test":
        return out
    key = pd.Series(np.random.default_rng([seed, 2]).random(len(out)), index=out.index)
    t = out["split"] == "test"
    rank = key[t].groupby(out.loc[t, "identity"]).rank(method="first")
    size = out.loc[t].groupby("identity")["identity"].transform("size")
    out.loc[t, "split"] = np.where(
        rank <= np.minimum(query_per_identity, size - 1), "query", "gallery"
    )
    return out


def wildlife_split(
    df: pd.DataFrame,
    kind: str,
    test_fraction: float = 0.5,
    seed: int = 0,
    new_identity_fraction: float = 0.2,
    cutoff: str | None = None,
    query_per_identity: int = 1,
    test_split: str = "query_gallery",
) -> pd.DataFrame:
    """wildlife-datasets split kinds on the table, without the library.

    kind: `closed_set` (every identity on both sides, `test_fraction` of each identity's images
    to test), `open_set` (`new_identity_fraction` of identities only in test, the rest closed
    set), `disjoint_set` (identities on one side only), `time_aware` (per-identity: images from
    dates after `cutoff`, or the latest `test_fraction` of each identity's dates, go to test;
    needs `date`). Hyphenated names (`closed-set`) are accepted.
    test_split: `query_gallery` splits the test images per identity into `query_per_identity`
    queries and the rest gallery; `test` keeps them as one query == gallery set.
    """
    kind = kind.replace("-", "_")
    if kind not in WILDLIFE_SPLITS:
        raise DataError(f"unknown wildlife split '{kind}'; valid: {list(WILDLIFE_SPLITS)}")
    if test_split not in ("query_gallery", "test"):
        raise DataError(f"test_split must be 'query_gallery' or 'test', got '{test_split}'")
    df = df.reset_index(drop=True)
    ident = df["identity"].astype(str)
    rng = np.random.default_rng([seed, 3])
    if kind == "disjoint_set":
        _, test_ids = split_identities(df, test_fraction, seed)
        test = ident.isin(test_ids).to_numpy()
    elif kind in ("closed_set", "open_set"):
        new = np.zeros(len(df), bool)
        if kind == "open_set":
            _, new_ids = split_identities(df, new_identity_fraction, seed)
            new = ident.isin(new_ids).to_numpy()
        key = pd.Series(rng.random(len(df)))
        frac = key.groupby(ident).rank(method="first") / ident.map(ident.value_counts())
        test = new | (frac > 1 - test_fraction).to_numpy()
    else:
        if "date" not in df:
            raise DataError("time_aware split needs a 'date' column")
        dates = pd.to_datetime(df["date"], errors="coerce")
        if dates.isna().any():
            rows = list(df.index[dates.isna()][:5])
            raise DataError(f"time_aware split: unparseable or empty 'date' in rows {rows}")
        if cutoff is not None:
            test = (dates > pd.Timestamp(cutoff)).to_numpy()
        else:
            day = dates.dt.normalize()
            rank = day.groupby(ident).rank(method="dense")
            n_days = day.groupby(ident).transform("nunique")
            test = ((rank > np.ceil(n_days * (1 - test_fraction))) & (n_days > 1)).to_numpy()
    return _test_side(df, test, query_per_identity, seed, test_split)


ADAPTERS: dict[str, Callable[..., tuple[pd.DataFrame, Path]]] = {
    "wildlife_csv": from_wildlife_metadata,
    "reid_folders": from_reid_folders,
    "identity_folders": from_identity_folders,
    "wildlife_class": from_wildlife_class,
}


def load_dataset(adapter: str, path: str | Path, root_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """Read `<root_dir>/<path>` with a named adapter; returns (table, image root).

    wildlife_csv: path is the CSV; identity_folders / reid_folders: the dataset folder;
    wildlife_class: `<Class>` or `<Class>/<folder>`, data in `<root_dir>/<folder or Class>`.
    """
    if adapter not in ADAPTERS:
        near = difflib.get_close_matches(adapter, ADAPTERS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise DataError(f"unknown adapter '{adapter}'{hint} (valid: {sorted(ADAPTERS)})")
    if adapter == "wildlife_class":
        name, _, folder = str(path).partition("/")
        return from_wildlife_class(name, Path(root_dir) / (folder or name))
    return ADAPTERS[adapter](Path(root_dir) / path)
