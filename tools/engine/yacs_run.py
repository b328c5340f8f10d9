"""A run of a YACS (.yaml) config: Detectron2's DefaultTrainer, assembled from its parts."""
import os
import weakref

import detectron2.utils.comm as comm
import torch
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model

from .checkpoint import AtomicDetectionCheckpointer
from .config import setup_config
from .evaluation import build_evaluator
from .training import build_step_trainer


class Trainer(DefaultTrainer):
    """
    DefaultTrainer with the configs' evaluators, atomic checkpoints and CPU multi-process
    training. DefaultTrainer's constructor wraps the model for DDP with GPU device ids, so
    this one builds the same parts itself (its build_* methods, in its order) and wraps the
    model with :func:`build_step_trainer`; everything else is DefaultTrainer's.
    """

    def __init__(self, cfg, model=None):
        """
        Args:
            model: the model built from ``cfg`` (e.g. before any output was written);
                built with ``build_model`` if None.
        """
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg) if model is None else model
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self._trainer = build_step_trainer(
            model, data_loader, optimizer, amp=cfg.SOLVER.AMP.ENABLED,
            device=cfg.MODEL.DEVICE, broadcast_buffers=False,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Train; return the final evaluation's results (DefaultTrainer returns them only
        when TEST.EXPECTED_RESULTS is set)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(dataset_name, output_folder)


# The class-count keys each meta architecture reads, with the dataset metadata they count.
_NUM_CLASSES_KEYS = {
    "GeneralizedRCNN": [("ROI_HEADS", "thing_classes")],
    "RetinaNet": [("RETINANET", "thing_classes")],
    "SemanticSegmentor": [("SEM_SEG_HEAD", "stuff_classes")],
    "PanopticFPN": [("ROI_HEADS", "thing_classes"), ("SEM_SEG_HEAD", "stuff_classes")],
}


class YacsRun:
    """Training or evaluation as a YACS config says (MODEL.*, SOLVER.*, DATASETS.*)."""

    weights_key = "MODEL.WEIGHTS"

    def __init__(self, config_file: str, opts):
        self.cfg = setup_config(config_file, opts, freeze=True)
        self.output_dir = self.cfg.OUTPUT_DIR
        self.seed = self.cfg.SEED
        self.weights = self.cfg.MODEL.WEIGHTS

    def datasets(self, eval_only: bool):
        """(dataset names, the key that names them) that the run reads."""
        names = self.cfg.DATASETS.TEST
        return (names, "DATASETS.TEST") if eval_only else (
            self.cfg.DATASETS.TRAIN + names, "DATASETS.TRAIN/TEST")

    def num_classes(self):
        """(key, value, dataset metadata it counts) of the class counts the model reads."""
        model = self.cfg.MODEL
        return [(f"MODEL.{node}.NUM_CLASSES", model[node].NUM_CLASSES, kind)
                for node, kind in _NUM_CLASSES_KEYS.get(model.META_ARCHITECTURE, ())]

    def build_model(self):
        return build_model(self.cfg)

    def evaluate(self, model):
        results = Trainer.test(self.cfg, model)
        if comm.is_main_process():
            verify_results(self.cfg, results)
        return results

    def train(self, model, resume: bool):
        torch.backends.cudnn.benchmark = self.cfg.CUDNN_BENCHMARK
        trainer = Trainer(self.cfg, model)
        trainer.resume_or_load(resume=resume)
        return trainer.train()
