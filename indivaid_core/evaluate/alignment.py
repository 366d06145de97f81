"""How well an image-text model's two towers agree: retrieval and zero-shot classification.

Plain numpy/torch over L2-normalised features; scikit-learn has no retrieval-recall metric for
paired embeddings, and these are a few lines each.
"""

from __future__ import annotations

import numpy as np
import open_clip
import torch
from tqdm.auto import tqdm

from indivaid_core.train.pretrain import to_model_input


@torch.no_grad()
def encode_images(model: open_clip.CLIP, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """uint8 (N, 3, H, W) -> L2-normalised image features (N, D)."""
    model.eval()
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="encode images", leave=False):
        out.append(model.encode_image(to_model_input(model, images[i : i + batch_size]), True))
    return torch.cat(out).numpy()


@torch.no_grad()
def encode_texts(model: open_clip.CLIP, texts: list[str], batch_size: int = 512) -> np.ndarray:
    """Strings -> L2-normalised text features, with open_clip's tokenizer at the model's length."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
    model.eval()
    out = [
        model.encode_text(tokenizer(texts[i : i + batch_size]), normalize=True)
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out).numpy()


def retrieval_recall(
    img: np.ndarray, txt: np.ndarray, ks: tuple[int, ...] = (1, 5), pool: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Image->text and text->image recall@k of paired features, in random pools of `pool`
    pairs (so the number does not depend on the held-out set's size); chance is k / pool."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(img))
    pool = min(pool, len(img))
    hits = {f"{d}_R@{k}": [] for d in ("i2t", "t2i") for k in ks}
    for start in range(0, len(order) - pool + 1, pool):
        idx = order[start : start + pool]
        sim = img[idx] @ txt[idx].T
        for d, s in (("i2t", sim), ("t2i", sim.T)):
            rank = (s > np.diag(s)[:, None]).sum(axis=1)  # 0 = the pair is the best match
            for k in ks:
                hits[f"{d}_R@{k}"].extend(rank < k)
    out = {key: float(np.mean(v)) for key, v in hits.items()}
    out.update({f"chance_R@{k}": k / pool for k in ks})
    out["pool"] = pool
    return out


def own_caption_accuracy(img: np.ndarray, txt: np.ndarray, seed: int = 0) -> float:
    """How often a photo's own caption outscores another random photo's caption (chance 0.5)."""
    rng = np.random.default_rng(seed)
    other = (np.arange(len(img)) + rng.integers(1, len(img), len(img))) % len(img)
    own = (img * txt).sum(axis=1)
    return float(np.mean(own > (img * txt[other]).sum(axis=1)))


def zero_shot_accuracy(feats: np.ndarray, prompts: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of picking the nearest prompt (rows of `prompts`) as each row's label index."""
    return float(np.mean((feats @ prompts.T).argmax(axis=1) == labels))
