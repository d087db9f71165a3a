"""The demo's toy relation model and its synthetic real + synthetic scene data.

Usage (what ``tools/train_net.py`` does)::

    model = build_demo_model(cfg)
    data_loader = build_train_loader(cfg, rank, world_size, start_iter=start_iter)
    for images, targets in data_loader: ...       # [B, 3, S, S], list of B target dicts

``engine.demo.hf_detr`` builds Hugging Face transformers' DETR for the same scenes
(``tools/train_hf_detr.py``); it is not imported here, transformers being an optional extra.
"""
from engine.demo.data import build_train_loader, build_val_loader, predicate_counts
from engine.demo.model import build_demo_model

__all__ = ["build_demo_model", "build_train_loader", "build_val_loader", "predicate_counts"]
