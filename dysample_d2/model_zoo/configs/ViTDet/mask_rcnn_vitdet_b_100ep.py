"""
ViTDet-B Mask R-CNN: Detectron2's lazy model common/models/mask_rcnn_vitdet.py (ViT-B/16,
simple feature pyramid with transposed-conv upsampling) trained as the ViTDet paper does:
the data, 100-epoch schedule, AMP and batch 64 of Detectron2's new_baselines LSJ recipe,
RGB input, AdamW with layer-wise lr decay 0.7, 250 warm-up iterations, MAE-pretrained init.
Detectron2's package ships the model but not this recipe. DySample parameters: 0.
"""
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from dysample_d2.modeling.lazy import model_zoo_recipe

dataloader, lr_multiplier, _, _, train = model_zoo_recipe(
    "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
)
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

dataloader.train.mapper.image_format = "RGB"  # the model's input_format
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=1024),
]

# the MAE checkpoint names the ViT's weights without the "backbone.net." prefix
train.init_checkpoint = (
    "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth?matching_heuristics=True"
)
lr_multiplier.warmup_length = 250 / train.max_iter
lr_multiplier.warmup_factor = 0.001

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
