"""The `pretrain` stage: a small CLIP trained on captioned synthetic animals.

The corpus is drawn by the synthetic generator at `pretrain.seed` (the embedded suite uses
seed 0, so no individual is shared), a fraction of its individuals is held out, the model is
trained with open_clip's ClipLoss, saved (fp16 safetensors, the `synthclip` weights), loaded
back through `build_clip`, and scored on the held-out individuals beside the untrained-text
control: zero-shot attributes, retrieval, own-caption accuracy.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score

from indivaid_core.config import PretrainCfg
from indivaid_core.data.decoded import decoded_images
from indivaid_core.evaluate import alignment
from indivaid_core.model.backbones import SYNTHCLIP_FILE, build_clip
from indivaid_core.repro import synthetic
from indivaid_core.repro.captions import COAT_ATTRIBUTES, value_prompts
from indivaid_core.safe_io import save_safetensors, write_json, write_text
from indivaid_core.train.pretrain import pretrain_clip


def _render(args: tuple) -> pd.DataFrame:
    out, name, seed, scale, size = args
    table = synthetic.generate_preset(
        Path(out) / name, synthetic.PRESETS[name], seed=seed, scale=scale, image_size=size
    )
    return table.assign(preset=name, root=str(Path(out) / name))


def make_corpus(p: PretrainCfg, out: Path) -> pd.DataFrame:
    """Render the corpus (one preset per process) -> one table; paths relative to `out`."""
    jobs = [(str(out), name, p.seed, p.scale, p.image_size) for name in p.presets]
    if p.processes > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(p.processes, len(jobs))) as pool:
            tables = pool.map(_render, jobs)
    else:
        tables = [_render(j) for j in jobs]
    table = pd.concat(tables, ignore_index=True)
    table["path"] = table["preset"] + "/" + table["path"]
    table["identity"] = table["preset"] + "/" + table["identity"]
    table["noun"] = table["preset"].map(lambda n: synthetic.PRESETS[n].noun)
    return table.drop(columns="root")


def heldout_split(table: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """True for the rows of a random `fraction` of each preset's individuals."""
    rng = np.random.default_rng(seed)
    held = []
    for _, ids in table.groupby("preset")["identity"]:
        names = ids.unique()
        held.extend(rng.choice(names, max(1, round(fraction * len(names))), replace=False))
    return table["identity"].isin(set(held))


def attribute_scores(model: open_clip.CLIP, table: pd.DataFrame, feats: np.ndarray) -> list:
    """Balanced zero-shot accuracy per (species, attribute), nearest value phrase; chance 1/n."""
    rows = []
    for (noun, kind), part in table.groupby(["noun", "pattern"]):
        f = feats[part.index.to_numpy()]
        tasks = {a: value_prompts(noun, kind, a) for a in COAT_ATTRIBUTES[kind]}
        truth = {a: part[f"coat_{a}"].map(COAT_ATTRIBUTES[kind][a].index) for a in tasks}
        if kind != "spots":  # side views: which flank is seen
            tasks["flank"] = [f"a photo of the {s} flank of a {noun}." for s in ("left", "right")]
            truth["flank"] = part["viewpoint"].map({"left": 0, "right": 1})
        tasks["daynight"] = [f"a photo of a {noun} by day.", f"a photo of a {noun} at night."]
        truth["daynight"] = part["daynight"].map({"day": 0, "night": 1})
        for attr, prompts in tasks.items():
            y = truth[attr].to_numpy()
            if len(np.unique(y)) < 2:
                continue
            pred = (f @ alignment.encode_texts(model, prompts).T).argmax(axis=1)
            with warnings.catch_warnings():  # a value no photo has is a wrong guess, not news
                warnings.simplefilter("ignore", UserWarning)
                accuracy = balanced_accuracy_score(y, pred)
            rows.append(
                {
                    "species": noun,
                    "attribute": attr,
                    "accuracy": accuracy,
                    "chance": 1 / len(prompts),
                    "photos": len(y),
                }
            )
    nouns = sorted(table["noun"].unique())
    species_f = alignment.encode_texts(model, [f"a photo of a {n}." for n in nouns])
    pred = (feats[table.index.to_numpy()] @ species_f.T).argmax(axis=1)
    y = table["noun"].map(nouns.index).to_numpy()
    rows.append(
        {
            "species": "all",
            "attribute": "species",
            "accuracy": balanced_accuracy_score(y, pred),
            "chance": 1 / len(nouns),
            "photos": len(y),
        }
    )
    return rows


def alignment_report(model: open_clip.CLIP, table: pd.DataFrame, images: torch.Tensor) -> dict:
    """Every alignment number for one model on the held-out rows of `table`."""
    table = table.reset_index(drop=True)
    img = alignment.encode_images(model, images)
    txt = alignment.encode_texts(model, table["caption"].tolist())
    attrs = pd.DataFrame(attribute_scores(model, table, img))
    return {
        "retrieval": alignment.retrieval_recall(img, txt),
        "own_caption_accuracy": alignment.own_caption_accuracy(img, txt),
        "attributes": attrs.to_dict(orient="records"),
        "attribute_mean_accuracy": float(attrs["accuracy"].mean()),
        "attribute_mean_chance": float(attrs["chance"].mean()),
    }


@dataclass
class PretrainResult:
    """What the notebook shows: the numbers, the loss, and the held-out photos and model."""

    metrics: dict
    history: list[dict]
    heldout: pd.DataFrame
    heldout_images: torch.Tensor
    model: open_clip.CLIP


def summary(metrics: dict) -> dict[str, float]:
    """The headline numbers for `dvc metrics show`."""
    out = {}
    for name in ("synthclip", "untrained_text"):
        m = metrics[name]
        out[name] = {
            **{k: v for k, v in m["retrieval"].items() if "R@" in k and "chance" not in k},
            "own_caption_accuracy": m["own_caption_accuracy"],
            "attribute_mean_accuracy": m["attribute_mean_accuracy"],
        }
    out["chance"] = {
        "R@1": metrics["synthclip"]["retrieval"]["chance_R@1"],
        "own_caption_accuracy": 0.5,
        "attribute_mean_accuracy": metrics["synthclip"]["attribute_mean_chance"],
    }
    out["train_seconds"] = metrics["train"]["seconds"]
    return out


def run_pretrain(p: PretrainCfg, work: Path, models: Path, num_workers: int = 0) -> PretrainResult:
    """Corpus -> training -> `models/synthclip/` (weights, card, metrics)."""
    t0 = time.perf_counter()
    corpus_dir = work / "pretrain" / "corpus"
    table = make_corpus(p, corpus_dir)
    t_corpus = time.perf_counter() - t0
    size = (p.image_size, p.image_size)
    images = torch.from_numpy(
        decoded_images(
            table,
            corpus_dir,
            image_size=size,
            backend="tensor",
            cache_dir=None,
            num_workers=num_workers,
            train=False,
        )
    )
    held = heldout_split(table, p.heldout_fraction, p.seed).to_numpy()
    model = build_clip(p.backbone, p.init, size)
    captions = table.loc[~held, "caption"].tolist()
    train_images = images[torch.from_numpy(np.flatnonzero(~held))]
    history, t_train = _train(p, model, captions, train_images)
    out = models / Path(SYNTHCLIP_FILE).parent.name
    out.mkdir(parents=True, exist_ok=True)
    weights = out / Path(SYNTHCLIP_FILE).name
    save_safetensors({k: v.half().contiguous() for k, v in model.state_dict().items()}, weights)

    held_table = table[held].reset_index(drop=True)
    held_images = images[torch.from_numpy(np.flatnonzero(held))]
    saved = build_clip(p.backbone, str(weights), size)  # what users load, fp16-rounded
    control = build_clip(p.backbone, p.init, size)  # the same start: random text tower
    metrics = {
        "synthclip": alignment_report(saved, held_table, held_images),
        "untrained_text": alignment_report(control, held_table, held_images),
        "corpus": _corpus_facts(p, table, held_table, render_seconds=t_corpus),
        "train": _train_facts(p, history, seconds=t_train),
    }
    write_json(out / "metrics.json", metrics, indent=1)
    write_json(out / "history.json", history)
    write_text(out / "MODEL_CARD.md", model_card(p, metrics))
    return PretrainResult(
        metrics, history, heldout=held_table, heldout_images=held_images, model=saved
    )


def _train(
    p: PretrainCfg, model: torch.nn.Module, captions: list[str], images: torch.Tensor
) -> tuple[list[dict], float]:
    """open_clip's contrastive loss over the captioned training photos; the loss history and
    the seconds it took."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
    tokens = tokenizer(captions)
    t1 = time.perf_counter()
    history = pretrain_clip(
        model,
        images,
        tokens,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        image_lr_factor=p.image_lr_factor,
        weight_decay=p.weight_decay,
        warmup_steps=p.warmup_steps,
        pad=p.pad,
        seed=p.seed,
        num_threads=p.num_threads,
    )
    return history, time.perf_counter() - t1


def _corpus_facts(
    p: PretrainCfg, table: pd.DataFrame, held_table: pd.DataFrame, *, render_seconds: float
) -> dict:
    """What the model saw and what was held out of it, for the metrics and the card."""
    return {
        "photos": len(table),
        "individuals": int(table["identity"].nunique()),
        "heldout_photos": len(held_table),
        "heldout_individuals": int(held_table["identity"].nunique()),
        "species": sorted(table["noun"].unique()),
        "seed": p.seed,
        "render_seconds": round(render_seconds, 1),
    }


def _train_facts(p: PretrainCfg, history: list[dict], *, seconds: float) -> dict:
    """How long the training ran and where its loss went (the last 20 steps averaged)."""
    return {
        "steps": len(history),
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "seconds": round(seconds, 1),
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
        "threads": p.num_threads,
    }


def model_card(p: PretrainCfg, m: dict) -> str:
    """A short card: what the weights are, what they saw, how long, how well aligned."""
    c, t, s, u = m["corpus"], m["train"], m["synthclip"], m["untrained_text"]
    rows = "\n".join(
        f"| {a['species']} | {a['attribute']} | {a['accuracy']:.2f} | {b['accuracy']:.2f} "
        f"| {a['chance']:.2f} |"
        for a, b in zip(s["attributes"], u["attributes"], strict=True)
    )
    r, ru = s["retrieval"], u["retrieval"]

    def pair(d: dict, a: str) -> str:
        return f"{d[f'{a}_R@1']:.3f} / {d[f'{a}_R@5']:.3f}"

    def own(d: dict) -> str:
        return f"{d['own_caption_accuracy']:.3f}"

    chance = f"{r['chance_R@1']:.3f} / {r['chance_R@5']:.3f}"
    loss = f"loss {t['first_loss']:.2f} -> {t['last_loss']:.2f}"
    return f"""# synthclip — a small CLIP trained on captioned synthetic animals

- **Architecture**: open_clip `{p.backbone}` (image tower timm tf_efficientnet_lite0 from the
  ImageNet weights, text tower from scratch), {p.image_size}x{p.image_size} input.
- **Use**: `build_clip("{p.backbone}", "synthclip", ...)`; tokenise with open_clip's
  `SimpleTokenizer(context_length=model.context_length)`.
- **Data**: {c["photos"]} photos of {c["individuals"]} synthetic individuals
  ({", ".join(c["species"])}), drawn by `indivaid synth --seed {p.seed}` (no individual of the
  embedded suite, which is drawn at seed 0); each caption states the coat attributes and
  conditions the generator drew. {c["heldout_individuals"]} individuals
  ({c["heldout_photos"]} photos) held out for the numbers below.
- **Training**: {t["steps"]} steps ({t["epochs"]} epochs, batch {t["batch_size"]}) of
  open_clip `ClipLoss`, AdamW lr {p.lr} (image tower x{p.image_lr_factor}),
  {t["seconds"]:.0f} s on {t["threads"]} CPU threads; {loss}.
- **Stored** in fp16; the numbers are of the stored weights.

## Alignment on held-out individuals (synthclip vs the same model with an untrained text tower)

| | synthclip | untrained text | chance |
|---|---|---|---|
| image->text R@1 / R@5 (pools of {r["pool"]}) | {pair(r, "i2t")} | {pair(ru, "i2t")} | {chance} |
| text->image R@1 / R@5 | {pair(r, "t2i")} | {pair(ru, "t2i")} | {chance} |
| own caption beats another photo's | {own(s)} | {own(u)} | 0.5 |

Zero-shot attribute classification (balanced accuracy, nearest value phrase):

| species | attribute | synthclip | untrained text | chance |
|---|---|---|---|---|
{rows}

The synthetic world is simple: these numbers say the towers share a meaningful space for the
attributes the generator draws, not that the model knows real animals.
"""
