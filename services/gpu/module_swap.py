"""Swapping a module's class in place: the same object, parameters, hooks and state dict, another forward."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def swap_classes(module: nn.Module, old: type[nn.Module], new: type[nn.Module],
                 accept: Callable[[nn.Module], bool] = lambda layer: True) -> int:
    """Give every layer under `module` whose class is exactly `old` (and that `accept`s) the class `new`.

    For subclasses that only change `forward`, so the bundle's shared models can be changed for one engine and
    given back on close. Returns how many changed."""
    changed = 0
    for layer in module.modules():
        if type(layer) is old and accept(layer):
            layer.__class__ = new
            changed += 1
    return changed
