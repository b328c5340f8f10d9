"""Differences between an export's outputs and the eager model's."""
import torch

__all__ = ["max_abs_diffs", "max_rel_diffs"]


def max_abs_diffs(expected, actual) -> dict:
    """{i: max |expected[i] - actual[i]|} of two tuples of tensors (or arrays); raises
    ValueError if their number or shapes differ (e.g. one detection more)."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} outputs expected, got {len(actual)}")
    diffs = {}
    for i, (a, b) in enumerate(zip(expected, actual)):
        b = torch.as_tensor(b)
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"output {i}: shape {tuple(a.shape)} expected, got {tuple(b.shape)}")
        diffs[i] = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    return diffs


def max_rel_diffs(expected, actual) -> dict:
    """{i: max |expected[i] - actual[i]| / max |expected[i]|}: feature errors on their scale."""
    diffs = max_abs_diffs(expected, actual)
    return {i: d / max(expected[i].abs().max().item(), 1e-12) if expected[i].numel() else 0.0
            for i, d in diffs.items()}
