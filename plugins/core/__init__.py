"""Framework-free math and networks (pure torch + torchvision).

Importing this package must not import detectron2, mmdet, mmcv or mmengine.
"""
