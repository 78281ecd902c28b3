"""torch.compile that cannot fail a request: compiled for the warmed shapes, eager for any other.

`ShapeGate` replaces a module's `forward`. While warming (at startup, before the service reports
ready) every call goes through the compiled function and its input shapes are remembered. Once
sealed, a call whose shapes were warmed runs the compiled graph; any other shape runs the
original eager forward, logged once per shape, so no request ever waits for a compile or hits
dynamo's recompile limit (with `fullgraph=True` that limit raises rather than falling back). A
compiled call that raises anything but a device fault falls back to eager too, and that shape
stays eager.

The gate keys on what dynamo guards on for these models: each tensor argument's shape, dtype
and device. The UNet's timestep is normalised to a float32 scalar on the sample's device first
(samplers hand over int64 or float32, on the CPU or the device), since the UNet turns it into
float32 anyway, so one graph serves every sampler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree

log = logging.getLogger(__name__)

ShapeKey = tuple[Any, ...]
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


def use_compile_cache(path: str | Path) -> None:
    """Point inductor's and Triton's caches at a persistent folder (before the first compile).

    Both read these variables when they first need their cache folder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")


def allow_recompiles(graphs: int) -> None:
    """Let dynamo keep one graph per declared shape of a function (its default limit is 8)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), graphs))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(int(config.accumulated_recompile_limit), 4 * graphs)


def shape_key(value: Any) -> Any:
    """What dynamo would specialise on: tensors by shape, dtype and device; containers recursively."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype, value.device.type)
    if isinstance(value, dict):
        return tuple(sorted((str(k), shape_key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(shape_key(v) for v in value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return type(value).__name__


def is_device_fault(exc: BaseException) -> bool:
    """A CUDA error other than out-of-memory: the context is likely unusable until the process restarts."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "CUDA driver error")
    )


class ShapeGate:
    """Stands in for `module.forward`: the compiled function for warmed shapes, eager otherwise."""

    def __init__(
        self,
        module: Any,
        name: str,
        *,
        mode: str,
        backend: str,
        normalise: Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
        compiler: Callable[..., Any] = torch.compile,
    ) -> None:
        self.name = name
        self.eager: Callable[..., Any] = module.forward
        options: dict[str, Any] = {"fullgraph": True, "dynamic": False, "backend": backend}
        if backend == "inductor":
            options["mode"] = mode
        self.compiled: Callable[..., Any] = compiler(self.eager, **options)
        # CUDA-graph outputs live in a pool the next replay overwrites; a scheduler that keeps the
        # raw output of a step (PNDM does) must get a copy.
        self._clone_outputs = backend == "inductor" and mode in CUDA_GRAPH_MODES
        self._normalise = normalise
        self.warmed: set[ShapeKey] = set()
        self.eager_shapes: set[ShapeKey] = set()
        self.warming = False
        module.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._normalise is not None:
            args, kwargs = self._normalise(args, kwargs)
        key = (shape_key(args), shape_key(kwargs))
        if self.warming:
            return self._warm(key, args, kwargs)
        if key in self.warmed:
            try:
                return self._run_compiled(args, kwargs)
            except Exception as exc:
                if isinstance(exc, torch.OutOfMemoryError) or is_device_fault(exc):
                    raise
                log.warning(
                    "%s: compiled call failed (%s: %s); this shape runs eager from now on",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
                self.warmed.discard(key)
                self.eager_shapes.add(key)
        elif key not in self.eager_shapes:
            self.eager_shapes.add(key)
            log.warning(
                "%s: shape %s was not declared in [gpu] and warmed at startup; running it eager",
                self.name,
                describe(key),
            )
        return self.eager(*args, **kwargs)

    def _warm(self, key: ShapeKey, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            out = self._run_compiled(args, kwargs)
        except Exception as exc:
            if isinstance(exc, torch.OutOfMemoryError) or is_device_fault(exc):
                raise
            # A compiler bug must not keep the service down: this shape serves eager instead.
            log.exception("%s: compiling shape %s failed; it runs eager", self.name, describe(key))
            self.eager_shapes.add(key)
            return self.eager(*args, **kwargs)
        self.warmed.add(key)
        return out

    def _run_compiled(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        out = self.compiled(*args, **kwargs)
        if self._clone_outputs:
            out = _pytree.tree_map_only(torch.Tensor, torch.Tensor.clone, out)
        return out


def describe(key: ShapeKey) -> str:
    """The tensor shapes in a key, e.g. "[2, 4, 64, 64] bfloat16, [2, 77, 768] bfloat16"."""
    parts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, tuple) and len(value) == 4 and value[0] == "T":
            parts.append(f"{list(value[1])} {str(value[2]).removeprefix('torch.')}")
        elif isinstance(value, tuple):
            for item in value:
                walk(item)

    walk(key)
    return ", ".join(parts) or "(no tensors)"


def unet_timestep_as_float(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """UNet2DConditionModel.forward(sample, timestep, ...): the timestep as float32 on the sample's device."""
    sample = args[0] if args else kwargs["sample"]
    if len(args) >= 2:
        args = (args[0], _as_float(args[1], sample), *args[2:])
    elif "timestep" in kwargs:
        kwargs = {**kwargs, "timestep": _as_float(kwargs["timestep"], sample)}
    return args, kwargs


def _as_float(timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(timestep, device=sample.device).to(torch.float32)


def compile_gates(
    unet: Any, vae_decoder: Any, *, mode: str, backend: str, compiler: Callable[..., Any] = torch.compile
) -> tuple[ShapeGate, ShapeGate]:
    """Gate (and compile) the UNet's and the VAE decoder's forwards in place."""
    return (
        ShapeGate(unet, "unet", mode=mode, backend=backend, normalise=unet_timestep_as_float, compiler=compiler),
        ShapeGate(vae_decoder, "vae decoder", mode=mode, backend=backend, compiler=compiler),
    )
