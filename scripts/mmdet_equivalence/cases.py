"""The models and images the mmdet <-> Detectron2 equivalence check runs (shared by both sides;
plain Python, no framework imports)."""

MMDET_RECIPE_OPTS = [
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "INPUT.FORMAT", "RGB",
    "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
    "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
]

# name -> mmdet base config (under mmdet/.mim/configs), depth, neck ("fpn": mmdet's FPN, or the
# authors' FPN_UPSAMPLE for DySample; "fpn_carafe": mmdet's FPN_CARAFE), neck upsampler, project
# config (+ opts for the nearest baselines, which have no mmdet-recipe config of their own).
CASES = {
    "faster_r50_nearest": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, upsampler="nearest",
        config="COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", opts=MMDET_RECIPE_OPTS),
    "faster_r50_dysample": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, upsampler="dysample",
        config="mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml"),
    "faster_r50_dysampleplus": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, upsampler="dysample+",
        config="mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml"),
    # DySample+ as the authors' first dysample.py release built it: scope conv with a bias
    "faster_r50_dysampleplus_scopebias": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, upsampler="dysample+",
        scope_bias=True, config="mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml",
        opts=["MODEL.FPN.DYSAMPLE.SCOPE_BIAS", "True"], images=1),
    "faster_r101_dysampleplus": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=101, upsampler="dysample+",
        config="mmdet-recipe/faster_rcnn_R_101_DySamplePlus_FPN_1x_mmdet.yaml", images=1),
    "mask_r50_dysample": dict(
        mmdet="mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", depth=50, upsampler="dysample",
        config="mmdet-recipe/mask_rcnn_R_50_DySample_FPN_1x_mmdet.yaml"),
    "mask_r50_dysampleplus": dict(
        mmdet="mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", depth=50, upsampler="dysample+",
        config="mmdet-recipe/mask_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml"),
    # The layout of the authors' released R-CNN files: mmdet's own FPN_CARAFE (a stride-2 conv
    # on C5 starts the top-down path, four upsamplers), images padded to 64.
    "faster_r50_carafefpn_nearest": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="nearest", config="COCO-Detection/faster_rcnn_R_50_CarafeFPN_1x.yaml",
        opts=MMDET_RECIPE_OPTS),
    "faster_r50_carafefpn_dysample": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="dysample",
        config="mmdet-recipe/faster_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml"),
    "faster_r50_carafefpn_dysampleplus": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="dysample+", scope_bias=True,
        config="mmdet-recipe/faster_rcnn_R_50_DySamplePlus_CarafeFPN_1x_mmdet.yaml"),
    "mask_r50_carafefpn_dysampleplus": dict(
        mmdet="mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="dysample+",
        config="mmdet-recipe/mask_rcnn_R_50_DySamplePlus_CarafeFPN_1x_mmdet.yaml"),
    # mmdet's FPN_CARAFE with its own upsamplers: the paper's comparison rows (mmcv's CARAFE
    # reassembly, CUDA-only, is run on CPU by mmdet_side.py's formula of its naive kernel).
    "faster_r50_carafefpn_carafe": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="carafe", images=2,
        config="mmdet-recipe/faster_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml"),
    # mmdet's own CARAFE Mask R-CNN config: CARAFE in FPN_CARAFE and in the mask head
    "mask_r50_carafefpn_carafe": dict(
        mmdet="carafe/mask-rcnn_r50_fpn-carafe_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="carafe", images=2,
        config="mmdet-recipe/mask_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml"),
    "faster_r50_carafefpn_deconv": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="deconv", images=1,
        config="mmdet-recipe/faster_rcnn_R_50_Deconv_CarafeFPN_1x_mmdet.yaml"),
    "faster_r50_carafefpn_pixel_shuffle": dict(
        mmdet="faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", depth=50, neck="fpn_carafe",
        upsampler="pixel_shuffle", images=1,
        config="mmdet-recipe/faster_rcnn_R_50_PixelShuffle_CarafeFPN_1x_mmdet.yaml"),
    "panoptic_r50_nearest": dict(
        mmdet="panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py", depth=50, upsampler="nearest",
        config="COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
        opts=MMDET_RECIPE_OPTS + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.6",
                                  "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.6"]),
    "panoptic_r50_dysample": dict(
        mmdet="panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py", depth=50, upsampler="dysample",
        config="mmdet-recipe/panoptic_fpn_R_50_DySample_1x_mmdet.yaml", class_agnostic_too=True),
    "panoptic_r50_dysampleplus": dict(
        mmdet="panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py", depth=50, upsampler="dysample+",
        config="mmdet-recipe/panoptic_fpn_R_50_DySamplePlus_1x_mmdet.yaml"),
}

# (height, width) of the "original" images and of the test-time resize mmdet's
# Resize(scale=(1333, 800), keep_ratio=True) gives them; none of the resized widths or
# heights below is a multiple of 32 except 800.
IMAGES = [
    dict(original=(480, 640), resized=(800, 1067)),
    dict(original=(333, 500), resized=(800, 1201)),
    dict(original=(640, 427), resized=(1199, 800)),
]

# Checkpoints that must be refused: (checkpoint case, project config, opts, words the error lists)
REFUSALS = [
    ("faster_r50_nearest", "mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml", [],
     "backbone.fpn_upsample5.offset.weight"),
    ("faster_r50_dysample", "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml", [],
     "backbone.fpn_upsample5.scope.weight"),
    ("faster_r50_dysampleplus", "mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml", [],
     "neck.upsample_modules.2.scope.weight"),
    ("faster_r101_dysampleplus", "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml", [],
     "backbone.bottom_up.res4.22.conv3.weight"),
    ("faster_r50_dysampleplus_scopebias",
     "mmdet-recipe/faster_rcnn_R_50_DySamplePlus_FPN_1x_mmdet.yaml", [],
     "MODEL.FPN.DYSAMPLE.SCOPE_BIAS True"),
    ("faster_r50_carafefpn_dysample", "mmdet-recipe/faster_rcnn_R_50_DySample_FPN_1x_mmdet.yaml",
     [], "backbone.fpn_lateral6.weight"),
    ("faster_r50_dysample", "mmdet-recipe/faster_rcnn_R_50_DySample_CarafeFPN_1x_mmdet.yaml", [],
     "backbone.fpn_lateral6.weight"),
    ("faster_r50_dysample", "mmdet-recipe/mask_rcnn_R_50_DySample_FPN_1x_mmdet.yaml", [],
     "the checkpoint holds a det model"),
    ("faster_r50_dysample", "COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml", [],
     "STRIDE_IN_1X1"),
    ("mask_r50_carafefpn_carafe", "mmdet-recipe/mask_rcnn_R_50_CARAFE_CarafeFPN_1x_mmdet.yaml",
     ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"],
     "set MODEL.ROI_MASK_HEAD.NAME MaskRCNNCarafeUpsampleHead"),
]
