"""
Panoptic FPN R50, Detectron2's 1x lazy recipe, with DySample (lp, 4 groups, static scope)
in the FPN's 3 top-down steps instead of nearest and in the semantic head's 6 scale-head 2x
steps instead of bilinear (the lazy form of panoptic_fpn_R_50_DySample_FPN_head_1x.yaml).
DySample parameters: 49,440 (FPN 3 x 8,224; head 6 x 4,128).
"""
from dysample_d2.modeling.lazy import model_zoo_recipe, to_dysample

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py"
)
model.backbone = to_dysample(model.backbone, style="lp", groups=4)
model.sem_seg_head = to_dysample(model.sem_seg_head, style="lp", groups=4)
