"""engine.demo.model: output format per decoder layer, gradient flow, and that it learns with the criterion."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from criterion import build_relation_criterion, weighted_total
from engine.config import load_config
from engine.demo.data import build_train_loader, predicate_counts
from engine.demo.model import OUTPUT_KEYS, RelationDETR, build_demo_model

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
B, Q, C, R, LAYERS = 2, 5, 6, 4, 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run fastest on one thread, and far faster on a machine shared by other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RelationDETR(num_classes=C, num_rel_classes=R, hidden_dim=32, nheads=4, dim_feedforward=64,
                        dec_layers=LAYERS, num_queries=Q)


def expected_shapes():
    return {
        "pred_logits_subject": (B, Q, C + 1),
        "pred_boxes_subject": (B, Q, 4),
        "pred_logits_object": (B, Q, C + 1),
        "pred_boxes_object": (B, Q, 4),
        "pred_logits_relation": (B, Q, R + 1),
        "pred_boxes_relation": (B, Q, 4),
    }


def test_output_shapes_for_every_decoder_layer(model):
    outputs = model(torch.rand(B, 3, 64, 64))
    assert set(outputs) == set(OUTPUT_KEYS) | {"aux_outputs"}
    layers = [*outputs["aux_outputs"], outputs]
    assert len(outputs["aux_outputs"]) == LAYERS - 1
    for layer in layers:
        assert {k: tuple(layer[k].shape) for k in OUTPUT_KEYS} == expected_shapes()
        for key in OUTPUT_KEYS:
            if key.startswith("pred_boxes"):
                assert ((layer[key] > 0) & (layer[key] < 1)).all()
    # layers differ: each aux dict really comes from its own decoder layer
    assert not torch.allclose(outputs["aux_outputs"][0]["pred_logits_relation"], outputs["pred_logits_relation"])


def test_no_aux_outputs_without_deep_supervision():
    model = RelationDETR(num_classes=C, num_rel_classes=R, hidden_dim=32, nheads=2, dim_feedforward=32,
                         dec_layers=2, num_queries=Q, deep_supervision=False)
    outputs = model(torch.rand(B, 3, 32, 32))
    assert set(outputs) == set(OUTPUT_KEYS)


def test_gradients_reach_every_parameter(model):
    outputs = model(torch.rand(B, 3, 64, 64))
    loss = sum(layer[k].sum() for layer in [*outputs["aux_outputs"], outputs] for k in OUTPUT_KEYS)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_an_aux_loss_trains_only_the_layers_below_it(model):
    outputs = model(torch.rand(B, 3, 64, 64))
    outputs["aux_outputs"][0]["pred_logits_relation"].sum().backward()
    first, last = model.decoder_layers[0], model.decoder_layers[-1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters())
    assert all(p.grad is None for p in last.parameters())


def test_demo_config_sizes_the_model():
    cfg = load_config(CONFIG_DIR / "demo.yaml")
    model = build_demo_model(cfg)
    detr = cfg.MODEL.DETR
    outputs = model(torch.rand(2, 3, cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE))
    assert outputs["pred_logits_subject"].shape == (2, detr.NUM_RELATION_QUERIES, detr.NUM_CLASSES + 1)
    assert outputs["pred_logits_relation"].shape == (2, detr.NUM_RELATION_QUERIES, detr.NUM_REL_CLASSES + 1)
    assert len(outputs["aux_outputs"]) == detr.DEC_LAYERS - 1
    assert len(model.decoder_layers) == detr.DEC_LAYERS
    assert model.query_embed.weight.shape == (detr.NUM_RELATION_QUERIES, detr.HIDDEN_DIM)


def test_model_and_criterion_fit_a_fixed_batch():
    """30 AdamW steps on 2 demo scenes cut the weighted loss the criterion reports to under a third."""
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["SOLVER.IMS_PER_BATCH", "2"])
    torch.manual_seed(0)
    model = build_demo_model(cfg)
    criterion = build_relation_criterion(cfg.MODEL.DETR, multi_dataset=cfg.DATASETS.MULTI_DATASET)
    images, targets = build_train_loader(cfg).batch(0)
    assert sum(len(t["relations"]) for t in targets) > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss_dict = criterion(model(images), targets)
        loss = weighted_total(loss_dict, criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] / 3, losses


def test_predicate_counts_feed_the_reweighted_criterion():
    cfg = load_config(
        CONFIG_DIR / "demo.yaml",
        ["MODEL.DETR.REWEIGHT_RELATIONS", "true", "DATASETS.DEMO.REAL.NUM_SCENES", "50",
         "DATASETS.DEMO.SYNTHETIC.NUM_SCENES", "50"],
    )
    loader = build_train_loader(cfg)
    counts = predicate_counts(loader.datasets.values(), cfg.MODEL.DETR.NUM_REL_CLASSES)
    criterion = build_relation_criterion(cfg.MODEL.DETR, multi_dataset=cfg.DATASETS.MULTI_DATASET,
                                         predicate_counts=counts)
    images, targets = loader.batch(0)
    loss_dict = criterion(build_demo_model(cfg)(images), targets)
    assert torch.isfinite(weighted_total(loss_dict, criterion.weight_dict))
