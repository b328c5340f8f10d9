"""The training loop both kinds of config share: Detectron2's SimpleTrainer or AMPTrainer
around the model, wrapped for DistributedDataParallel when several processes train."""
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.engine.defaults import create_ddp_model


def build_step_trainer(model, data_loader, optimizer, *, amp: bool, device: str, **ddp_kwargs):
    """
    AMPTrainer if ``amp`` else SimpleTrainer, over ``model`` wrapped by Detectron2's
    ``create_ddp_model`` (a no-op in one process). ``ddp_kwargs`` go to it (e.g.
    ``broadcast_buffers``, ``fp16_compression``, as a lazy config's ``train.ddp`` says).
    Detectron2 passes ``device_ids=[local rank]``, which torch refuses for a CPU model:
    CPU processes pass ``device_ids=None``.
    """
    if str(device) == "cpu":
        ddp_kwargs.setdefault("device_ids", None)
    model = create_ddp_model(model, **ddp_kwargs)
    return (AMPTrainer if amp else SimpleTrainer)(model, data_loader, optimizer)
