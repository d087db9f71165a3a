"""Stand-in for tests, NOT detectron2: ``detectron2.modeling.build_model`` (commit 02b5c4e) builds
``cfg.MODEL.META_ARCHITECTURE`` from a registry (fvcore's ``Registry``, as detectron2 does), where
a project such as SpeaQ registers its meta-architecture."""
from fvcore.common.registry import Registry

META_ARCH_REGISTRY = Registry("META_ARCH")


def build_model(cfg):
    return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
