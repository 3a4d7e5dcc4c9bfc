"""Make DeepSpeed 0.19.8 read our checkpoints with `torch.load(weights_only=True)` and a three-class allowlist.

Why: DeepSpeed unpickles every checkpoint file with `weights_only=False`, which runs whatever a pickle asks for
(`os.system`, any importable callable). The manifest check (train/checkpoint/manifest.py) catches a damaged
file, but not a hostile one whose manifest was rewritten to match. Upstream loads in many places, all through
the module attribute `torch.load`: `runtime/checkpoint_engine/torch_checkpoint_engine.py` (model, expert and
ZeRO optimizer files in `engine.load_checkpoint`), `checkpoint/universal_checkpoint.py`,
`checkpoint/autoep_universal.py`, `runtime/base_optimizer.py` and `runtime/zero/stage3.py` (universal loads),
and `checkpoint/ds_to_universal.py` (the conversion). So `weights_only_loads()` swaps `torch.load`, only while
our resume runs, for one that always passes `weights_only=True` inside `torch.serialization.safe_globals` of
`DEEPSPEED_GLOBALS`; a file needing anything else is refused by name (`UnsafeCheckpointError`) before any of it
is built. `python -m train.checkpoint.weights_only_load_shim MODULE ARGS...` runs a module (ds_to_universal)
the same way.

What the files hold (measured on ZeRO-0/1/2/3, EP 1 and 2, fp32 and bf16, and ds_to_universal output): tensors,
plain containers and strings everywhere; ZeRO optimizer files and the universal `optimizer_state.pt` add
`LossScaler` (a static loss scale: two plain attributes), `ZeroStageEnum` (an int enum) and, for ZeRO-1/2,
`fragment_address` (a dataclass of two ints). None of them runs code when rebuilt. Nothing in our checkpoints
needs `weights_only=False`: `trainer_state_rank*.pt` holds plain types by construction (checkpointer.rng_state).

Remove it when DeepSpeed loads with `weights_only=True` itself (tests/checkpoint/test_weights_only_load.py,
`test_upstream_still_unpickles_foreign_globals`, fails then); keep the allowlist and `load_weights_only`.
"""

from __future__ import annotations

import contextlib
import pickle
import runpy
import sys
from collections.abc import Iterator
from typing import Any

import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

DEEPSPEED_GLOBALS = (LossScaler, ZeroStageEnum, fragment_address)
ORIGINAL_TORCH_LOAD = torch.load


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file asks to unpickle something outside the allowlist; nothing of it was built."""


def load_weights_only(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: bool | None = None,
                      mmap: bool | None = None, **pickle_load_args: Any) -> Any:
    """`torch.load` with `weights_only=True` whatever the caller asked, tensors plus DEEPSPEED_GLOBALS only."""
    if pickle_module is not None:
        raise UnsafeCheckpointError(f"{f}: refused a load with a custom pickle_module (weights_only loads only)")
    try:
        with torch.serialization.safe_globals(list(DEEPSPEED_GLOBALS)):
            return ORIGINAL_TORCH_LOAD(f, map_location=map_location, weights_only=True, mmap=mmap,
                                       **pickle_load_args)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(str(e))
        allowed = ", ".join(f"{g.__module__}.{g.__qualname__}" for g in DEEPSPEED_GLOBALS)
        raise UnsafeCheckpointError(f"{f}: refused to unpickle this checkpoint file (weights_only=True allows "
                                    f"tensors, plain containers and {allowed}): {reason}") from None


def _unpickler_reason(message: str) -> str:
    """torch's WeightsUnpickler detail (which GLOBAL, which module), without its advice to load unsafely."""
    lines = [x.strip() for x in message.splitlines() if x.strip()]
    detail = next((x for x in lines if "GLOBAL" in x or "WeightsUnpickler error" in x), lines[-1] if lines else "")
    return detail.split("WeightsUnpickler error: ", 1)[-1].split(" Please use", 1)[0]


class LoadCounter:
    """How many files were read through the shim (the resume log says so, and the tests check it)."""

    def __init__(self) -> None:
        self.files = 0


@contextlib.contextmanager
def weights_only_loads() -> Iterator[LoadCounter]:
    """While inside, every `torch.load` (DeepSpeed's included) is `load_weights_only`; restored on exit."""
    counter = LoadCounter()

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        counter.files += 1
        return load_weights_only(f, *args, **kwargs)

    previous = torch.load
    torch.load = load
    try:
        yield counter
    finally:
        torch.load = previous


def main(argv: list[str]) -> None:
    """Run `python -m MODULE ARGS...` with weights-only loads; report the count on stderr."""
    if not argv:
        raise SystemExit("usage: python -m train.checkpoint.weights_only_load_shim MODULE [ARGS...]")
    sys.argv = argv
    with weights_only_loads() as counter:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    print(f"weights_only_load_shim: {counter.files} files read with weights_only=True", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
