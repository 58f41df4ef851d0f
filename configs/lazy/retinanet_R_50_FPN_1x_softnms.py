# RetinaNet R50-FPN 1x with Gaussian Soft-NMS at test (sigma 0.5, boxes kept while their score
# >= 0.001): LazyConfig twin of configs/retinanet_R_50_FPN_1x_softnms.yaml.
from .common.retinanet import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.nms_type = "gaussian"
model.soft_nms_sigma = 0.5
model.soft_nms_score_threshold = 0.001
model.max_detections_per_image = 100
