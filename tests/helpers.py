"""Shared helpers of the tests: the project's real configs at tiny CPU settings."""
import importlib.util
import os

import torch
from detectron2.structures import Boxes, BitMasks, Instances

from dysample_d2 import model_zoo
from tools.engine import setup_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")


def config_path(name):
    """configs/<name>, or Detectron2's model-zoo config of that name, as
    dysample_d2.model_zoo finds them."""
    return model_zoo.get_config_file(name)


# Small inputs and light heads for CPU tests; random-init FrozenBN ResNets diverge, so
# GroupNorm, as Detectron2's from-scratch recipes use.
TINY_OPTS = [
    "MODEL.WEIGHTS", "",  # no ImageNet weights in tests
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RESNETS.NORM", "GN", "MODEL.RESNETS.STRIDE_IN_1X1", "False",
]


def load_script(name):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def load_config(name, tiny=True, opts=()):
    """A config from configs/ on CPU, with TINY_OPTS when `tiny`, then `opts`."""
    return setup_config(config_path(name), ["MODEL.DEVICE", "cpu"]
                        + (TINY_OPTS if tiny else []) + list(opts))


def synthetic_batch(cfg, batch_size=2, height=64, width=96, seed=0):
    """Training inputs for any of the configs' meta-architectures: image, instances, sem_seg."""
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        image = torch.randint(0, 256, (3, height, width), generator=gen).float()
        boxes = torch.tensor([[8.0, 8.0, 40.0, 48.0], [50.0, 10.0, 90.0, 30.0]])
        masks = torch.zeros(2, height, width, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.tensor([0, 2])
        instances.gt_masks = BitMasks(masks)
        sem_seg = torch.randint(0, 3, (height, width), generator=gen)
        batch.append(
            {"image": image, "instances": instances, "sem_seg": sem_seg,
             "height": height, "width": width}
        )
    return batch

