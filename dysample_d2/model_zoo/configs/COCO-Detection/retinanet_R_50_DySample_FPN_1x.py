"""
RetinaNet R50-FPN, Detectron2's 1x lazy recipe, with DySample (lp, 4 groups, static scope)
in the FPN's 2 top-down steps (res3..res5; P6/P7 come from res5) instead of nearest.
DySample parameters: 16,448 (2 x 8,224).

It starts from ImageNet weights (train.init_checkpoint) with Detectron2's FrozenBN ResNet. From
scratch (train.init_checkpoint=""), FrozenBN diverges (NaN within 3 iterations, as with the
nearest FPN of retinanet_R_50_FPN_1x.py, at lr 1e-4 too): use GroupNorm and train every stage,

    train.init_checkpoint="" model.backbone.bottom_up.stem.norm=GN
    model.backbone.bottom_up.stages.norm=GN model.backbone.bottom_up.freeze_at=0

(SyncBN on GPUs); docs/lazy_configs.md, "Training from scratch".
"""
from dysample_d2.modeling.lazy import model_zoo_recipe, to_dysample

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "COCO-Detection/retinanet_R_50_FPN_1x.py"
)
model.backbone = to_dysample(model.backbone, style="lp", groups=4)
