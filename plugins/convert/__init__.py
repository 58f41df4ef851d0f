"""Conversions between reference checkpoints (effdet, mmdet) and plugins.core modules.

Pure dict/tensor code: it never imports effdet, mmdet or any framework.
"""
