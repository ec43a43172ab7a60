"""The modality gap of a sample: numbers, and 2-d maps of image, text and projected embeddings.

Matched rows: image ``i``, the text paired with it (a reference caption), and the image's ``pd``
projection. The numbers compare images and projections with the texts (``metrics.modality_gap``),
and count how often a row's nearest text among the sample's is its own. The maps (PCA, the gap's own
axis, t-SNE; scikit-learn) are fitted on all three sets at once, so their places can be compared.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from decap_core import metrics
from decap_core.errors import DecapError

TSNE_PERPLEXITY = 30.0
GAP_AXIS = "x: texts' mean -> images' mean; y: PC1 of the rest"
LINEAR_MAPS = ("PCA", GAP_AXIS)  # where a set's mean is a place on the map


def gap_numbers(image: torch.Tensor, text: torch.Tensor, projected: torch.Tensor) -> dict[str, dict[str, float]]:
    """For images and for their projections against the matched texts: ``modality_gap`` and the share
    whose nearest text (cosine, among the sample's) is their own (``own_text_nearest``)."""
    _check_matched(image, text, projected)
    answers = list(range(len(text)))
    return {name: {**metrics.modality_gap(points, text),
                   "own_text_nearest": metrics.top1_accuracy(points, text, answers)}
            for name, points in (("image", image), ("projected", projected))}


def embedding_maps(image: torch.Tensor, text: torch.Tensor, projected: torch.Tensor,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """2-d coordinates of the images, then the texts, then the projections (rows in that order), in three maps:
    ``PCA``; ``GAP_AXIS`` (x: along the line from the texts' mean to the images' mean; y: the first principal
    component of what is left), which shows the gap even where PCA's two leading directions carry content
    alone; and ``t-SNE``."""
    _check_matched(image, text, projected)
    points = torch.cat([image, text, projected]).double().numpy()
    if len(points) < 6:
        raise DecapError(f"a map needs at least 2 sampled pairs, got {len(image)}")
    direction = (image.mean(0) - text.mean(0)).double().numpy()
    direction /= max(float(np.linalg.norm(direction)), 1e-12)
    along = points @ direction
    rest = PCA(n_components=1, random_state=seed).fit_transform(points - np.outer(along, direction))[:, 0]
    perplexity = min(TSNE_PERPLEXITY, (len(points) - 1) / 3)
    return {
        "PCA": PCA(n_components=2, random_state=seed).fit_transform(points),
        GAP_AXIS: np.column_stack([along, rest]),
        "t-SNE": TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points),
    }


def _check_matched(image: torch.Tensor, text: torch.Tensor, projected: torch.Tensor) -> None:
    if not (image.shape == text.shape == projected.shape) or image.ndim != 2:
        raise DecapError(f"matched embeddings must have one shape [N, D]: images {tuple(image.shape)}, "
                         f"texts {tuple(text.shape)}, projections {tuple(projected.shape)}")
