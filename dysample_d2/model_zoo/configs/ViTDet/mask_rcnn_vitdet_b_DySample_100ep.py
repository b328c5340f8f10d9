"""
ViTDet-B Mask R-CNN (mask_rcnn_vitdet_b_100ep.py beside this file) whose simple feature
pyramid upsamples with DySample (lp, 4 groups, static scope): each of the three 2x2
transposed convs (two for P2, one for P3) becomes a 1x1 conv to the same reduced channels
and a DySample of scale 2 (dysample_d2/modeling/vitdet.py).
DySample parameters: 30,816; the three steps: 695,328 parameters in place of 2,655,168.
"""
from dysample_d2.modeling.lazy import to_dysample

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = to_dysample(model.backbone, style="lp", groups=4)
