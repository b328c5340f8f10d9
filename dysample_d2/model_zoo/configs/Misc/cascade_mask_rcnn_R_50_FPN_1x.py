"""
Cascade Mask R-CNN R50-FPN: Detectron2's 1x lazy Mask R-CNN recipe
(COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py) with the ROI heads of its lazy
Cascade R-CNN model (common/models/cascade_rcnn.py), nearest FPN; Detectron2 ships this
recipe as YACS only (Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml).
DySample parameters: 0.
"""
from detectron2 import model_zoo

from dysample_d2.modeling.lazy import model_zoo_recipe

dataloader, lr_multiplier, model, optimizer, train = model_zoo_recipe(
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
)
model.roi_heads = model_zoo.get_config("common/models/cascade_rcnn.py").model.roi_heads
