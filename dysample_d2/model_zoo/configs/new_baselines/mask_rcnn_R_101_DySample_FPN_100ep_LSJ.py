"""
Mask R-CNN R101-FPN, Detectron2's new_baselines 100-epoch large-scale-jitter recipe, with
DySample (lp, 4 groups, static scope) in the FPN's 3 top-down steps instead of nearest.
DySample parameters: 24,672 (3 x 8,224).
"""
from dysample_d2.modeling.lazy import model_zoo_recipe, to_dysample

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py"
)
model.backbone = to_dysample(model.backbone, style="lp", groups=4)
