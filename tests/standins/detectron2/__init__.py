"""Stand-in for tests, NOT detectron2: see tests/standins/README.md.

Mirrors the package layout of detectron2 commit 02b5c4e (facebookresearch/detectron2 main).
"""
