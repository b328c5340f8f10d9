"""
RetinaNet R50-FPN, Detectron2's 1x lazy recipe as it ships (nearest-neighbour FPN): the
baseline of retinanet_R_50_DySample_FPN_1x.py beside it.
DySample parameters: 0.

From scratch (train.init_checkpoint=""), its FrozenBN ResNet diverges as the DySample one does;
the GroupNorm overrides of that file's docstring train it.
"""
from dysample_d2.modeling.lazy import model_zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "COCO-Detection/retinanet_R_50_FPN_1x.py"
)
