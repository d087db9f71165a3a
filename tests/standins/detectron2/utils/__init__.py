"""Stand-in for tests, NOT detectron2 (see tests/standins/README.md)."""
