"""
Panoptic FPN R50, Detectron2's 1x lazy recipe, with DySample (lp, 4 groups, static scope)
in the FPN's 3 top-down steps instead of nearest (the semantic head unchanged).
DySample parameters: 24,672 (3 x 8,224).
"""
from dysample_d2.modeling.lazy import model_zoo_recipe, to_dysample

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py"
)
model.backbone = to_dysample(model.backbone, style="lp", groups=4)
