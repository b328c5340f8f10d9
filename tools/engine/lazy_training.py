"""Building and training the model of a LazyConfig (.py) config: its model,
optimizer, data loaders and evaluator instantiated, trained with Detectron2's trainers and
hooks as its ``train.*`` says."""
from detectron2.config import instantiate
from detectron2.engine import default_writers, hooks
from detectron2.utils import comm

from .checkpoint import AtomicDetectionCheckpointer
from .evaluation import evaluate_lazy
from .training import build_step_trainer

def build_lazy_model(cfg):
    return instantiate(cfg.model).to(cfg.train.device)


def train_lazy(cfg, model, resume: bool):
    """Train ``model`` as ``cfg.train`` says; the latest evaluation's results."""
    train = cfg.train
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
