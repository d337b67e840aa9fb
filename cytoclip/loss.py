"""The contrastive objective of CytoCLIP (paper Section III-D) and two label-aware variants.

``clip_loss`` is the symmetric cross-entropy of CLIP: image->text and text->image cross-entropy over the
scaled cosine similarities of a batch, averaged. What counts as a positive is chosen by ``targets``:

- ``"pairs"``: the paper's objective; image *i* matches only text *i* (the diagonal).
- ``"labels"``: every image/text pair in the batch that shares a region label is a positive. A batch of
  region images often holds several crops of the same region, whose captions are identical; with pair
  targets these are pushed apart as negatives. Soft targets spread uniformly over the positives of a row
  remove that contradiction (the supervised-contrastive idea).
- ``"ontology"``: soft targets weighted by the tree distance between labels in the nomenclature,
  ``target_ij ∝ exp(-d(label_i, label_j) / sigma)``. This follows the idea of weighting contrastive pairs by
  a distance between samples, used with spatial distances in a reference brain by CytoNet (Schiffer et al.)
  and with geodesic distances by Boztoprak et al.; here the distance is hops in the region ontology, so a
  neighbouring sub-region is a "partial" positive. As ``sigma -> 0`` it reduces to ``"labels"``.

``ContrastiveLoss`` wraps ``clip_loss`` for distributed training: features (and labels) are all-gathered
across ranks with gradients, so the loss is taken over the global batch, with open_clip's
``gather_with_grad`` / ``local_loss`` semantics.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("pairs", "labels", "ontology")


def batch_false_negatives(labels: Sequence[Any], batch_size: int, draws: int = 2000, seed: int = 0) -> dict:
    """How often the paper's pair targets push apart two images of the same region: batches of ``batch_size``
    drawn uniformly without replacement from ``labels`` (one per training image), ``draws`` times.

    Returns ``share_of_batches`` (the fraction of batches holding some region twice), ``per_batch`` (the mean
    number of same-region off-diagonal pairs, each a false negative under ``"pairs"``) and ``n_labels``.
    A simulation rather than a formula: the label frequencies are far from uniform.
    """
    codes = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)[1]
    if batch_size < 2 or len(codes) < batch_size:
        raise ValueError(f"batch_size: expected 2..{len(codes)} (the number of labels given), got {batch_size}")
    rng = np.random.default_rng(seed)
    pairs = np.empty(draws)
    for i in range(draws):
        counts = np.bincount(codes[rng.choice(len(codes), batch_size, replace=False)])
        pairs[i] = (counts * (counts - 1) // 2).sum()
    return {"share_of_batches": float((pairs > 0).mean()), "per_batch": float(pairs.mean()),
            "n_labels": int(codes.max() + 1), "batch_size": int(batch_size)}


def _as_label_tensor(labels: Any, n: int, device: torch.device, name: str = "labels") -> torch.Tensor:
    if labels is None:
        raise ValueError(f"{name}: required for label-aware targets ('labels' or 'ontology'); got None")
    t = torch.as_tensor(labels, device=device)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected a 1-D sequence of {n} integer labels, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer labels, got dtype {t.dtype}")
    return t.long()


def target_weights(
    row_labels: torch.Tensor | Sequence[int] | None,
    col_labels: torch.Tensor | Sequence[int] | None,
    targets: str = "pairs",
    distance: torch.Tensor | np.ndarray | None = None,
    sigma: float = 1.0,
    row_offset: int = 0,
    n_rows: int | None = None,
    n_cols: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Row-normalised soft target matrix (rows x cols) for the given ``targets`` kind.

    Rows are the local samples (queries), columns the (possibly gathered) candidates. For ``"pairs"`` the
    positive of row *i* is column ``row_offset + i``. For ``"labels"`` every column with the same label is a
    positive, with equal weight. For ``"ontology"`` column *j* gets weight ``exp(-distance[l_i, l_j] / sigma)``,
    where ``distance`` is a (K, K) matrix of label-to-label distances indexed by label index. Each row sums to 1.
    """
    if targets not in TARGETS:
        raise ValueError(f"targets: expected one of {TARGETS}, got {targets!r}")
    if targets == "pairs":
        if n_rows is None or n_cols is None:
            raise ValueError("pairs targets need n_rows and n_cols")
        w = torch.zeros(n_rows, n_cols, device=device)
        idx = torch.arange(n_rows, device=device)
        w[idx, idx + row_offset] = 1.0
        return w
    n_rows = len(row_labels) if n_rows is None else n_rows
    n_cols = len(col_labels) if n_cols is None else n_cols
    rl = _as_label_tensor(row_labels, n_rows, device, "labels (rows)")
    cl = _as_label_tensor(col_labels, n_cols, device, "labels (columns)")
    if targets == "labels":
        w = (rl[:, None] == cl[None, :]).float()
        return w / w.sum(dim=1, keepdim=True)
    if distance is None:
        raise ValueError("distance: 'ontology' targets need a (K, K) label-distance matrix; got None")
    d = torch.as_tensor(distance, dtype=torch.float32, device=device)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distance: expected a square (K, K) matrix, got shape {tuple(d.shape)}")
    k = d.shape[0]
    if int(max(rl.max(), cl.max())) >= k or int(min(rl.min(), cl.min())) < 0:
        raise ValueError(f"labels: expected label indices in [0, {k}) to index the distance matrix")
    if not sigma > 0:
        raise ValueError(f"sigma: expected a positive temperature for ontology targets, got {sigma}")
    # softmax(-d/sigma) is exp(-d/sigma) normalised per row, computed without underflow for small sigma
    return torch.softmax(-d[rl][:, cl] / sigma, dim=1)


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # float32 log-softmax: under autocast the logits may be bf16/fp16, too coarse for the loss
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def _loss_from_logits(
    logits_per_image: torch.Tensor,
    logits_per_text: torch.Tensor,
    targets: str,
    row_labels,
    col_labels,
    distance,
    sigma: float,
    row_offset: int,
) -> torch.Tensor:
    n_rows, n_cols = logits_per_image.shape
    if targets == "pairs":
        # hard-index cross-entropy: identical arithmetic to open_clip's ClipLoss
        gt = torch.arange(n_rows, device=logits_per_image.device) + row_offset
        return (F.cross_entropy(logits_per_image.float(), gt) + F.cross_entropy(logits_per_text.float(), gt)) / 2
    w = target_weights(row_labels, col_labels, targets, distance=distance, sigma=sigma, row_offset=row_offset,
                       n_rows=n_rows, n_cols=n_cols, device=logits_per_image.device)
    # the weights depend on labels only, so text row i against image column j uses the same matrix
    return (_soft_ce(logits_per_image, w) + _soft_ce(logits_per_text, w)) / 2


def scale_from_log(logit_scale: torch.Tensor | float, temperature_clamp: float | None = 100.0) -> torch.Tensor:
    """``exp(logit_scale)`` clamped at ``temperature_clamp`` (CLIP caps the scale at 100)."""
    ls = torch.as_tensor(logit_scale)
    scale = ls.exp()
    return scale.clamp(max=temperature_clamp) if temperature_clamp is not None else scale


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    targets: str = "pairs",
    labels: torch.Tensor | Sequence[int] | None = None,
    distance: torch.Tensor | np.ndarray | None = None,
    temperature_clamp: float | None = 100.0,
    sigma: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """Symmetric cross-entropy of a batch of image/text features (paper eq. in III-D).

    Args:
        image_features, text_features: (N, D) tensors; L2-normalised here when ``normalize`` (a no-op for
            features that already are).
        logit_scale: the *log* of the temperature scale (CLIP's learnable parameter); the scale used is
            ``exp(logit_scale)`` clamped at ``temperature_clamp``.
        targets: ``"pairs"`` (the paper), ``"labels"`` (same-label pairs are positives) or ``"ontology"``
            (soft targets ``∝ exp(-distance[l_i, l_j] / sigma)``).
        labels: (N,) integer label per pair; required for ``"labels"``/``"ontology"``.
        distance: (K, K) label-distance matrix (e.g. ontology hops) indexed by label; ``"ontology"`` only.
    Returns:
        a scalar tensor: mean of the image->text and text->image cross-entropies.
    """
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError("image_features/text_features: expected two (N, D) tensors of the same shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    if normalize:
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
    scale = scale_from_log(logit_scale, temperature_clamp)
    logits_per_image = scale * image_features @ text_features.T
    return _loss_from_logits(logits_per_image, logits_per_image.T, targets, labels, labels, distance, sigma, 0)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's piece.

    Written here rather than using ``torch.distributed.nn.all_gather`` (deprecated; its gloo backward goes
    through all-to-all): an all-reduce of the gathered gradient works on every backend (gloo, nccl).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ws, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        ctx.rank, ctx.n = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(ws)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks along dim 0, keeping the autograd path
    to every rank's piece: the gradient of this rank's piece is summed over all ranks' losses."""
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks; only this rank's own piece keeps its gradient."""
    parts = [torch.zeros_like(tensor) for _ in range(world_size)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    parts[rank] = tensor  # the local piece keeps its graph
    return torch.cat(parts, dim=0)


class ContrastiveLoss(nn.Module):
    """``clip_loss`` as a module, over the global batch when running distributed.

    With ``world_size > 1`` the features are all-gathered across ranks; ``gather_with_grad=True`` keeps the
    gradient path through every rank's features (the gradients then match one process on the whole batch,
    once DDP averages them). ``local_loss=True`` scores only this rank's rows against all columns, which saves
    memory and gives the same averaged loss and gradients. Labels (for label-aware targets) are gathered too.
    Rank and world size default to the initialised process group.
    """

    def __init__(
        self,
        targets: str = "pairs",
        distance: torch.Tensor | np.ndarray | None = None,
        sigma: float = 1.0,
        temperature_clamp: float | None = 100.0,
        gather_with_grad: bool = True,
        local_loss: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if targets not in TARGETS:
            raise ValueError(f"targets: expected one of {TARGETS}, got {targets!r}")
        if targets == "ontology" and distance is None:
            raise ValueError("distance: 'ontology' targets need a (K, K) label-distance matrix")
        self.targets = targets
        self.sigma = float(sigma)
        self.temperature_clamp = temperature_clamp
        self.gather_with_grad = gather_with_grad
        self.local_loss = local_loss
        self._rank, self._world_size = rank, world_size
        # a buffer so the matrix follows .to(device) with the module
        self.register_buffer("distance", None if distance is None else torch.as_tensor(distance, dtype=torch.float32),
                             persistent=False)

    @property
    def rank(self) -> int:
        return _world()[0] if self._rank is None else self._rank

    @property
    def world_size(self) -> int:
        return _world()[1] if self._world_size is None else self._world_size

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of this rank's features (N, D) against the global batch; ``logit_scale`` is in log space."""
        ws, rank = self.world_size, self.rank
        if ws <= 1:
            return clip_loss(image_features, text_features, logit_scale, targets=self.targets, labels=labels,
                             distance=self.distance, temperature_clamp=self.temperature_clamp, sigma=self.sigma)
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
        if self.gather_with_grad:
            all_img, all_txt = gather_with_grad(image_features), gather_with_grad(text_features)
        else:
            all_img = gather_no_grad(image_features, rank, ws)
            all_txt = gather_no_grad(text_features, rank, ws)
        all_labels = None
        if self.targets != "pairs":
            lab = _as_label_tensor(labels, image_features.shape[0], image_features.device)
            parts = [torch.zeros_like(lab) for _ in range(ws)]
            torch.distributed.all_gather(parts, lab)
            all_labels = torch.cat(parts)
        scale = scale_from_log(logit_scale, self.temperature_clamp)
        if self.local_loss:
            n = image_features.shape[0]
            per_image = scale * image_features @ all_txt.T
            per_text = scale * text_features @ all_img.T
            return _loss_from_logits(per_image, per_text, self.targets, labels, all_labels, self.distance,
                                     self.sigma, n * rank)
        per_image = scale * all_img @ all_txt.T
        return _loss_from_logits(per_image, per_image.T, self.targets, all_labels, all_labels, self.distance,
                                 self.sigma, 0)
