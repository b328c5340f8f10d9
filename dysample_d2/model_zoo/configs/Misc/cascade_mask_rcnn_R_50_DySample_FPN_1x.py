"""
Cascade Mask R-CNN R50-FPN (cascade_mask_rcnn_R_50_FPN_1x.py beside this file) with
DySample (lp, 4 groups, static scope) in the FPN's 3 top-down steps instead of nearest.
DySample parameters: 24,672 (3 x 8,224).
"""
from dysample_d2.modeling.lazy import to_dysample

from .cascade_mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone = to_dysample(model.backbone, style="lp", groups=4)
