"""Building, evaluating and training the model of a YACS (.yaml) config: Detectron2's
DefaultTrainer, assembled from its parts."""
import os
import weakref

import detectron2.utils.comm as comm
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.evaluation import verify_results

from .checkpoint import AtomicDetectionCheckpointer
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


def evaluate_yacs(cfg, model):
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def train_yacs(cfg, model, resume: bool):
    """Train ``model`` with :class:`Trainer`; the final evaluation's results."""
    trainer = Trainer(cfg, model)
    trainer.resume_or_load(resume=resume)
    return trainer.train()
