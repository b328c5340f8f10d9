"""
RetinaNet R50-FPN, Detectron2's 1x lazy recipe, with DySample (lp, 4 groups, static scope)
in the FPN's 2 top-down steps (res3..res5; P6/P7 come from res5) instead of nearest.
DySample parameters: 16,448 (2 x 8,224).
"""
from dysample_d2.modeling.lazy import model_zoo_recipe, to_dysample

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "COCO-Detection/retinanet_R_50_FPN_1x.py"
)
model.backbone = to_dysample(model.backbone, style="lp", groups=4)
