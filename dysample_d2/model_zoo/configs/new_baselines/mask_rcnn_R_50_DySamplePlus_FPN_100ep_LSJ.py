"""
Mask R-CNN R50-FPN, Detectron2's new_baselines 100-epoch large-scale-jitter recipe, with
DySample+ (lp, 4 groups, dynamic scope) in the FPN's 3 top-down steps instead of nearest.
DySample parameters: 49,248 (3 x 16,416).
"""
from dysample_d2.modeling.lazy import model_zoo_recipe, to_dysample

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
)
model.backbone = to_dysample(model.backbone, style="lp", groups=4, dyscope=True)
