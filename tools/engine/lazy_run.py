"""A run of a LazyConfig (.py) config: its model, optimizer, data loaders and evaluator
instantiated, trained with Detectron2's trainers and hooks as its ``train.*`` says."""
import torch
from detectron2.config import instantiate
from detectron2.engine import default_writers, hooks
from detectron2.utils import comm
from omegaconf import DictConfig, ListConfig, OmegaConf

from .checkpoint import AtomicDetectionCheckpointer
from .checks import UserKeyError
from .evaluation import evaluate_lazy
from .lazy_config import setup_lazy_config
from .training import build_step_trainer

# What training and evaluation read (Detectron2's configs/common/train.py and data/*.py).
_NEEDED_FOR_EVALUATION = ("model", "train", "dataloader.test", "dataloader.evaluator")
_NEEDED_FOR_TRAINING = _NEEDED_FOR_EVALUATION + ("dataloader.train", "optimizer",
                                                 "lr_multiplier")


def _num_classes(node, path):
    """(key, value, metadata it counts) of every int ``num_classes`` under ``node``: stuff
    classes under a semantic segmentation head, thing classes elsewhere. Interpolations
    (``${..num_classes}``) are left out: the key they point to is the one to set."""
    if isinstance(node, DictConfig):
        items = [(k, node[k]) for k in node
                 if not OmegaConf.is_missing(node, k) and not OmegaConf.is_interpolation(node, k)]
    elif isinstance(node, ListConfig):
        items = list(enumerate(node))
    else:
        return
    for name, value in items:
        key = f"{path}.{name}"
        if name == "num_classes" and isinstance(value, int) and not isinstance(value, bool):
            yield key, value, "stuff_classes" if "sem_seg_head" in key else "thing_classes"
        yield from _num_classes(value, key)


def _dataset_names(loader_cfg):
    names = loader_cfg.get("dataset", {}).get("names", ())
    return [names] if isinstance(names, str) else list(names)


class LazyRun:
    """Training or evaluation as a lazy config says (model, dataloader.*, optimizer,
    lr_multiplier, train.*)."""

    weights_key = "train.init_checkpoint"

    def __init__(self, config_file: str, overrides, eval_only: bool):
        self.cfg = cfg = setup_lazy_config(config_file, overrides)
        for key in _NEEDED_FOR_EVALUATION if eval_only else _NEEDED_FOR_TRAINING:
            node = cfg
            for part in key.split("."):
                if part not in node:
                    raise UserKeyError(f"--config-file {config_file}: the lazy config has no {key}")
                node = node[part]
        self.output_dir = cfg.train.output_dir
        self.seed = cfg.train.get("seed", -1)
        self.weights = cfg.train.init_checkpoint

    def datasets(self, eval_only: bool):
        """(dataset names, the key that names them) that the run reads."""
        names = _dataset_names(self.cfg.dataloader.test)
        if eval_only:
            return names, "dataloader.test.dataset.names"
        return (_dataset_names(self.cfg.dataloader.train) + names,
                "dataloader.{train,test}.dataset.names")

    def num_classes(self):
        """(key, value, dataset metadata it counts) of the model's class counts."""
        return list(_num_classes(self.cfg.model, "model"))

    def build_model(self):
        return instantiate(self.cfg.model).to(self.cfg.train.device)

    def evaluate(self, model):
        return evaluate_lazy(self.cfg, model)

    def train(self, model, resume: bool):
        cfg, train = self.cfg, self.cfg.train
        torch.backends.cudnn.benchmark = train.get("cudnn_benchmark", False)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        trainer = build_step_trainer(
            model, instantiate(cfg.dataloader.train), optimizer,
            amp=train.amp.enabled, device=train.device, **train.ddp,
        )
        checkpointer = AtomicDetectionCheckpointer(
            model, train.output_dir, optimizer=optimizer, trainer=trainer
        )
        results = {}  # of the latest evaluation

        def evaluate():
            results.clear()
            results.update(evaluate_lazy(cfg, trainer.model))
            return results

        main = comm.is_main_process()
        trainer.register_hooks([
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **train.checkpointer) if main else None,
            hooks.EvalHook(train.eval_period, evaluate),
            hooks.PeriodicWriter(default_writers(train.output_dir, train.max_iter),
                                 period=train.log_period) if main else None,
        ])
        checkpointer.resume_or_load(train.init_checkpoint, resume=resume)
        # a checkpoint stores the iteration that just finished
        start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
        trainer.train(start_iter, train.max_iter)
        return results or None
