"""Tests of cytoclip.loss: agreement with open_clip, label-aware targets, and the distributed gather."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cytoclip.loss import ContrastiveLoss, clip_loss, target_weights


def _feats(n=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_pairs_equals_open_clip_cliploss():
    from open_clip.loss import ClipLoss

    img, txt = _feats()
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    log_scale = torch.tensor(math.log(1 / 0.07))
    ours = clip_loss(img, txt, log_scale)
    theirs = ClipLoss()(img, txt, log_scale.exp())
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert ours.item() > 0


def test_logit_scale_is_clamped_at_100():
    img, txt = _feats()
    big = clip_loss(img, txt, torch.tensor(10.0))  # exp(10) >> 100
    at_cap = clip_loss(img, txt, torch.tensor(math.log(100.0)))
    assert torch.allclose(big, at_cap)
    assert not torch.allclose(clip_loss(img, txt, torch.tensor(10.0), temperature_clamp=None), at_cap)


def test_labels_equal_pairs_when_labels_distinct():
    img, txt = _feats()
    labels = torch.randperm(8)
    a = clip_loss(img, txt, 2.0, targets="labels", labels=labels)
    b = clip_loss(img, txt, 2.0, targets="pairs")
    assert torch.allclose(a, b, atol=1e-6)


def test_labels_targets_spread_over_same_label_pairs():
    w = target_weights([0, 0, 1], [0, 0, 1], "labels")
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    img, txt = _feats(n=4)
    # with a repeated label the loss differs from pairs (duplicates are no longer negatives)
    assert not torch.allclose(clip_loss(img, txt, 2.0, targets="labels", labels=[0, 0, 1, 2]),
                              clip_loss(img, txt, 2.0))


def test_ontology_reduces_to_labels_as_sigma_goes_to_zero():
    img, txt = _feats()
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 0])
    dist = torch.tensor([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1], [3, 2, 1, 0]], dtype=torch.float32)
    lab = clip_loss(img, txt, 2.0, targets="labels", labels=labels)
    onto = clip_loss(img, txt, 2.0, targets="ontology", labels=labels, distance=dist, sigma=1e-4)
    assert torch.allclose(lab, onto, atol=1e-6)
    wide = clip_loss(img, txt, 2.0, targets="ontology", labels=labels, distance=dist, sigma=2.0)
    assert not torch.allclose(lab, wide, atol=1e-3)
    w = target_weights(labels, labels, "ontology", distance=dist, sigma=1.0)
    assert torch.allclose(w.sum(1), torch.ones(8))
    # a closer label gets more weight than a farther one
    assert w[0, 1] > w[0, 3] > w[0, 4]


def test_bad_inputs_raise_clear_errors():
    img, txt = _feats()
    with pytest.raises(ValueError, match="targets"):
        clip_loss(img, txt, 2.0, targets="nope")
    with pytest.raises(ValueError, match="labels"):
        clip_loss(img, txt, 2.0, targets="labels")
    with pytest.raises(ValueError, match="distance"):
        clip_loss(img, txt, 2.0, targets="ontology", labels=torch.arange(8))
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(img, txt[:4], 2.0)
    with pytest.raises(ValueError, match="label indices"):
        clip_loss(img, txt, 2.0, targets="ontology", labels=torch.arange(8), distance=np.zeros((3, 3)))


def test_gradients_flow_to_features_and_scale():
    img, txt = _feats()
    img.requires_grad_(True)
    scale = torch.tensor(2.0, requires_grad=True)
    clip_loss(img, txt, scale, targets="labels", labels=[0, 0, 1, 1, 2, 2, 3, 3]).backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert scale.grad is not None and scale.grad != 0


# --- distributed: two gloo processes equal one process on the whole batch -------------------------------

def _make_problem(seed=0, n=8, d_in=6, d=5):
    g = torch.Generator().manual_seed(seed)
    x_img, x_txt = torch.randn(n, d_in, generator=g), torch.randn(n, d_in, generator=g)
    labels = torch.tensor([0, 1, 1, 2, 0, 3, 2, 2])
    dist = torch.tensor([[0, 2, 3, 3], [2, 0, 1, 4], [3, 1, 0, 4], [3, 4, 4, 0]], dtype=torch.float32)
    torch.manual_seed(seed + 1)
    model = torch.nn.ModuleDict({"img": torch.nn.Linear(d_in, d), "txt": torch.nn.Linear(d_in, d)})
    log_scale = torch.nn.Parameter(torch.tensor(1.5))
    return x_img, x_txt, labels, dist, model, log_scale


def _loss_and_grads(loss_fn, x_img, x_txt, labels, model, log_scale):
    loss = loss_fn(model["img"](x_img), model["txt"](x_txt), log_scale, labels)
    params = list(model.parameters()) + [log_scale]
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), [g.detach() for g in grads]


def _ddp_worker(rank, world_size, init_file, targets, local_loss, out_file):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        x_img, x_txt, labels, dist, model, log_scale = _make_problem()
        n = x_img.shape[0] // world_size
        sl = slice(rank * n, (rank + 1) * n)
        loss_fn = ContrastiveLoss(targets=targets, distance=dist, sigma=1.0, local_loss=local_loss)
        loss, grads = _loss_and_grads(loss_fn, x_img[sl], x_txt[sl], labels[sl], model, log_scale)
        # what DDP does: average the loss report and the gradients over ranks
        torch.distributed.all_reduce(loss)
        loss /= world_size
        for g in grads:
            torch.distributed.all_reduce(g)
            g /= world_size
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, out_file)
        torch.distributed.barrier()  # no rank tears the group down while another still talks to it
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("targets,local_loss", [("pairs", False), ("pairs", True), ("ontology", True),
                                                ("labels", False)])
def test_two_process_gather_matches_single_process(tmp_path, targets, local_loss):
    import torch.multiprocessing as mp

    out_file = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), targets, local_loss, str(out_file)), nprocs=2,
             join=True)
    got = torch.load(out_file)
    x_img, x_txt, labels, dist, model, log_scale = _make_problem()
    ref_loss, ref_grads = _loss_and_grads(ContrastiveLoss(targets=targets, distance=dist, sigma=1.0),
                                          x_img, x_txt, labels, model, log_scale)
    assert torch.allclose(got["loss"], ref_loss, atol=1e-6)
    assert len(got["grads"]) == len(ref_grads)
    for a, b in zip(got["grads"], ref_grads):
        assert torch.allclose(a, b, atol=1e-6), (a, b)
