"""
Mask R-CNN R101-FPN, Detectron2's new_baselines 100-epoch large-scale-jitter recipe as it
ships (nearest-neighbour FPN): the baseline of the DySample variants beside it.
DySample parameters: 0.
"""
from dysample_d2.modeling.lazy import model_zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py"
)
