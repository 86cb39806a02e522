"""Run the same engine work with refreshes padded to `refresh_size` (the engine's way) and to the whole batch
(the way before it), for tests that compare the two."""

from __future__ import annotations

from typing import Callable

import torch


def own_rows_and_whole_batch(monkeypatch, make_engine: Callable, run: Callable) -> dict:
    """{"own_rows": run(engine), "whole_batch": run(engine)}, each on a fresh `make_engine()` with the same seed
    (the same adapter initialisation)."""
    import services.gpu.engine as engine_module

    results = {}
    for padding in ("own_rows", "whole_batch"):
        with monkeypatch.context() as patch:
            if padding == "whole_batch":
                patch.setattr(engine_module, "refresh_size", lambda rows, batch: batch)
            torch.manual_seed(0)
            with make_engine() as engine:
                results[padding] = run(engine)
    return results
