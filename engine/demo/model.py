"""A toy DETR-like relation model: a small conv encoder and a transformer decoder of relation queries.

Each relation query predicts one ``(subject, predicate, object)`` triplet: the subject's and the
object's class and box, the predicate, and the union box of the pair, at every decoder layer,
in the output format of the ``criterion`` package (see its docstring)::

    {"pred_logits_subject": [B, Q, C + 1], "pred_boxes_subject": [B, Q, 4],
     "pred_logits_object":  [B, Q, C + 1], "pred_boxes_object":  [B, Q, 4],
     "pred_logits_relation": [B, Q, R + 1], "pred_boxes_relation": [B, Q, 4],
     "aux_outputs": [the same six keys for decoder layers 0 .. L-2]}   # if deep supervision

The last logit is background ("no object" / "no relation"); boxes are sigmoid ``(cx, cy, w, h)``.
The layout follows DETR's ``models/detr.py``: heads shared by all decoder layers, a shared
LayerNorm on every layer's output, auxiliary outputs for all but the last layer.
"""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

__all__ = ["OUTPUT_KEYS", "RelationDETR", "build_demo_model"]

OUTPUT_KEYS = (
    "pred_logits_subject",
    "pred_boxes_subject",
    "pred_logits_object",
    "pred_boxes_object",
    "pred_logits_relation",
    "pred_boxes_relation",
)


class MLP(nn.Module):
    """DETR's box head: ``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


def sine_position_embedding(height: int, width: int, dim: int, device: torch.device | None = None) -> Tensor:
    """DETR's 2-D sine embedding of normalized pixel centres: ``[height * width, dim]``.

    The first ``dim / 2`` channels encode y, the rest x, as interleaved sin/cos pairs.
    """
    if dim % 4:
        raise ValueError(f"the position embedding needs a dimension divisible by 4, got {dim}")
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    quarter = dim // 4
    frequencies = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    angles_y = 2 * math.pi * y[:, None] * frequencies  # [H, dim/4]
    angles_x = 2 * math.pi * x[:, None] * frequencies  # [W, dim/4]
    embed_y = torch.cat([angles_y.sin(), angles_y.cos()], dim=-1)  # [H, dim/2]
    embed_x = torch.cat([angles_x.sin(), angles_x.cos()], dim=-1)  # [W, dim/2]
    grid = torch.cat(
        [embed_y[:, None, :].expand(height, width, -1), embed_x[None, :, :].expand(height, width, -1)], dim=-1
    )
    return grid.reshape(height * width, dim)


class RelationDETR(nn.Module):
    """Relation queries decoding a conv feature map into subject/object/predicate triplets.

    Args:
        num_classes: entity classes ``C`` (without background).
        num_rel_classes: predicates ``R`` (without "no relation").
        hidden_dim: transformer width ``D`` (divisible by 4 and by ``nheads``).
        nheads: attention heads.
        dim_feedforward: decoder feed-forward width.
        dec_layers: decoder layers ``L``.
        num_queries: relation queries ``Q``.
        dropout: decoder dropout.
        deep_supervision: return ``aux_outputs`` for layers ``0 .. L-2``.
    """

    def __init__(
        self,
        num_classes: int,
        num_rel_classes: int,
        hidden_dim: int = 64,
        nheads: int = 4,
        dim_feedforward: int = 128,
        dec_layers: int = 3,
        num_queries: int = 16,
        dropout: float = 0.0,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        # Three stride-2 convs: a 64-pixel image becomes an 8x8 map of D-dim tokens.
        self.backbone = nn.Sequential(
            nn.Conv2d(3, hidden_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim // 2, hidden_dim, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=2, padding=1),
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.decoder_layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                hidden_dim, nheads, dim_feedforward, dropout=dropout, batch_first=True
            )
            for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.subject_class = nn.Linear(hidden_dim, num_classes + 1)
        self.object_class = nn.Linear(hidden_dim, num_classes + 1)
        self.relation_class = nn.Linear(hidden_dim, num_rel_classes + 1)
        self.subject_box = MLP(hidden_dim, hidden_dim, 4, 3)
        self.object_box = MLP(hidden_dim, hidden_dim, 4, 3)
        self.relation_box = MLP(hidden_dim, hidden_dim, 4, 3)

    def _predict(self, hs: Tensor) -> dict[str, Tensor]:
        """One decoder layer's ``[B, Q, D]`` states -> the six prediction tensors."""
        hs = self.decoder_norm(hs)
        return {
            "pred_logits_subject": self.subject_class(hs),
            "pred_boxes_subject": self.subject_box(hs).sigmoid(),
            "pred_logits_object": self.object_class(hs),
            "pred_boxes_object": self.object_box(hs).sigmoid(),
            "pred_logits_relation": self.relation_class(hs),
            "pred_boxes_relation": self.relation_box(hs).sigmoid(),
        }

    def forward(self, images: Tensor) -> dict:
        """``images [B, 3, H, W]`` -> the output dict described in the module docstring."""
        features = self.backbone(images)  # [B, D, h, w]
        batch, dim, height, width = features.shape
        memory = features.flatten(2).transpose(1, 2)  # [B, h*w, D]
        memory = memory + sine_position_embedding(height, width, dim, device=memory.device)
        hs = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)  # [B, Q, D]
        per_layer = []
        for layer in self.decoder_layers:
            hs = layer(hs, memory)
            per_layer.append(hs)
        outputs: dict = self._predict(per_layer[-1])
        if self.deep_supervision:
            outputs["aux_outputs"] = [self._predict(hs) for hs in per_layer[:-1]]
        return outputs


def build_demo_model(cfg: DictConfig) -> RelationDETR:
    """The toy model sized by ``cfg.MODEL.DETR`` (not moved to ``MODEL.DEVICE``)."""
    detr = cfg.MODEL.DETR
    return RelationDETR(
        num_classes=detr.NUM_CLASSES,
        num_rel_classes=detr.NUM_REL_CLASSES,
        hidden_dim=detr.HIDDEN_DIM,
        nheads=detr.NHEADS,
        dim_feedforward=detr.DIM_FEEDFORWARD,
        dec_layers=detr.DEC_LAYERS,
        num_queries=detr.NUM_RELATION_QUERIES,
        dropout=detr.DROPOUT,
        deep_supervision=detr.DEEP_SUPERVISION,
    )
