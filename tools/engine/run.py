"""A training or evaluation run of a YACS (.yaml) or lazy (.py) config, as train_net.py
makes it: the config, what the run reads from it (its :class:`~.layout.ConfigLayout`), and
the model's building, evaluation and training."""
import torch

from .checks import UserKeyError
from .config import setup_config
from .layout import class_counts, get_key, layout_of


class Run:
    """
    Training or evaluation as the config ``config_file`` (with ``opts``) says. Its
    attributes: ``cfg``; ``weights`` and ``weights_key`` (the checkpoint and the key that
    names it); ``output_dir``; ``seed`` (-1: a random seed).
    """

    def __init__(self, config_file: str, opts, eval_only: bool):
        self.cfg = setup_config(config_file, opts, freeze=True)
        self.layout = layout = layout_of(self.cfg)
        needed = layout.needed_for_evaluation if eval_only else layout.needed_for_training
        for key in needed:
            if get_key(self.cfg, key, None) is None:
                raise UserKeyError(f"--config-file {config_file}: the config has no {key}")
        self.eval_only = eval_only
        self.weights_key = layout.weights
        self.weights = get_key(self.cfg, layout.weights)
        self.output_dir = get_key(self.cfg, layout.output_dir)
        self.seed = get_key(self.cfg, layout.seed, -1)

    def datasets(self):
        """(dataset names, the key that names them) that the run reads."""
        def names(key):
            value = get_key(self.cfg, key, ())
            return [value] if isinstance(value, str) else list(value)

        test = names(self.layout.test_datasets)
        if self.eval_only:
            return test, self.layout.test_datasets
        return names(self.layout.train_datasets) + test, self.layout.datasets

    def num_classes(self):
        """(key, value, dataset metadata it counts) of the class counts the model reads."""
        return class_counts(self.cfg)

    def build_model(self):
        return self.layout.build_model(self.cfg)

    def evaluate(self, model):
        return self.layout.evaluate(self.cfg, model)

    def train(self, model, resume: bool):
        torch.backends.cudnn.benchmark = get_key(self.cfg, self.layout.cudnn_benchmark, False)
        return self.layout.train(self.cfg, model, resume)
