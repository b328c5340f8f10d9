import os
import sys
import tempfile

import pytest

# Detectron2 resolves its builtin dataset paths from $DETECTRON2_DATASETS when
# detectron2.data is first imported: point it at a dataset the tests generate, before any
# test module imports detectron2 (and never at a user's real COCO).
DATASETS_ROOT = tempfile.mkdtemp(prefix="dysample_d2_test_datasets_")
os.environ["DETECTRON2_DATASETS"] = DATASETS_ROOT
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# train_net.py, and the tooling modules of scripts/ (synthetic data, benchmarks, the authors'
# DySample as the tests' oracle, the mmdet converter)
for path in (REPO, os.path.join(REPO, "scripts")):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def coco_root():
    """A tiny COCO-layout dataset (6 train, 3 val images of 128 px) under $DETECTRON2_DATASETS."""
    from synthetic_data import generate_synthetic_coco

    generate_synthetic_coco(DATASETS_ROOT, train_images=6, val_images=3, size=128, seed=0)
    return DATASETS_ROOT
