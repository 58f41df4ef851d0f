"""Embedded synthetic COCO-format dataset for demos and tests (framework-free)."""
