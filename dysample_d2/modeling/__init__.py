import warnings

with warnings.catch_warnings():
    # Detectron2's modeling package applies torch.jit.script, which torch deprecates, at
    # import: a warning about Detectron2's code that no user of this package can act on
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    from .carafe_fpn import CarafeFPN, build_resnet_carafe_fpn_backbone
    from .carafe_mask_head import MaskRCNNCarafeUpsampleHead
    from .fpn import (
        DySampleFPN,
        build_resnet_dysample_fpn_backbone,
        build_retinanet_resnet_dysample_fpn_backbone,
    )
    from .lazy import to_carafe_fpn, to_dysample
    from .semantic_seg import DySampleSemSegFPNHead
    from .vitdet import DySampleSimpleFeaturePyramid
