"""LLM.int8 modules: Int8Params, Linear8bitLt, replace_8bit_linear and model_memory_bytes.

Placement over several devices (accelerate): ``int8_module_sizes`` gives the bytes of every module
of a converted model, meta or real, with int8 layers counted as int8 + fp32 SCB; for
``accelerate.infer_auto_device_map`` pass ``special_dtypes=int8_special_dtypes(model)`` so a meta
model's 16-bit placeholders count as int8 (see their docstrings). ``from_pretrained`` needs
neither: ``llmint8.hf``'s quantizer sizes the layers for transformers.

When a weight becomes int8 (one rule everywhere):
- An ``Int8Params`` with ``has_fp16_weights=False`` is quantized when it is put on a device
  (``.to(device)``, ``.cuda()``, ``.cpu()``, which includes ``module.to(device)``), or by
  ``quantize_()``. A dtype-only ``.to(dtype)`` and the meta device never quantize.
- ``replace_8bit_linear`` quantizes the weights it converts at once, on the device they are on
  (CPU included); weights on the meta device stay 16/32-bit placeholders so that the model's
  ``state_dict`` keys match a 16-bit checkpoint.
- ``load_state_dict`` quantizes a 16/32-bit checkpoint weight on arrival (on the module's device;
  a meta module takes the checkpoint's device) and takes an int8 one (weight + SCB) as is.
- Once int8, a weight is only ever moved (CB and SCB together), never re-quantized or
  dequantized in place.
- ``has_fp16_weights=True`` keeps the 16/32-bit master weight and quantizes it in every forward.

The serialized form is bitsandbytes': ``weight`` (int8 [out, in]), ``bias``, ``SCB`` (fp32 [out])
and ``weight_format`` (uint8 0 = row-major), so bitsandbytes checkpoints load, on any device.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

from . import ops

__all__ = [
    "Int8Params",
    "Linear8bitLt",
    "decoder_layers_per_device",
    "int8_module_sizes",
    "int8_special_dtypes",
    "model_memory_bytes",
    "replace_8bit_linear",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# bitsandbytes' weight_format code for a plain row-major int8 matrix; other codes name GPU-tiled
# layouts of old bitsandbytes versions, which this package does not read.
ROW_MAJOR_FORMAT = 0
_INT8_ONLY_KEYS = ("SCB", "weight_format")


# ----------------------------------------------------------------------------------------------
# Validation shared by the modules and the Hugging Face loader
# ----------------------------------------------------------------------------------------------


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or ValueError unless it is a finite number >= 0."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0 (0 disables outliers), got {threshold}")
    return float(threshold)


def check_outlier_capacity(capacity: Optional[int]) -> Optional[int]:
    """``capacity`` as an int (None: every input column, so no outlier is ever left in int8), or
    ValueError unless it is an integer >= 0."""
    if capacity is None:
        return None
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"outlier_capacity must be an int or None, got {type(capacity).__name__}")
    if capacity < 0:
        raise ValueError(f"outlier_capacity must be >= 0, got {capacity}")
    return capacity


def check_int8_checkpoint(
    weight: Optional[torch.Tensor],
    scb: Optional[torch.Tensor],
    weight_format: Optional[torch.Tensor],
    shape: tuple[int, int],
    prefix: str = "",
) -> None:
    """ValueError naming the key unless ``weight``/``SCB``/``weight_format`` form an int8 weight of ``shape``."""
    out_features, in_features = shape
    if weight is None:
        raise ValueError(f"'{prefix}weight' is missing: '{prefix}SCB' needs its int8 weight")
    if scb is None:
        raise ValueError(
            f"'{prefix}SCB' is missing: the int8 '{prefix}weight' needs its float32 per-row scales "
            f"SCB [{out_features}]"
        )
    if weight.dtype != torch.int8:
        raise ValueError(f"'{prefix}weight' must be int8 when '{prefix}SCB' is given, got {weight.dtype}")
    if tuple(weight.shape) != (out_features, in_features):
        raise ValueError(
            f"'{prefix}weight' must have shape [{out_features}, {in_features}] (out, in), "
            f"got {list(weight.shape)}"
        )
    if scb.dtype != torch.float32:
        raise ValueError(f"'{prefix}SCB' must be float32, got {scb.dtype}")
    if tuple(scb.shape) != (out_features,):
        raise ValueError(f"'{prefix}SCB' must have shape [{out_features}] (out_features), got {list(scb.shape)}")
    if weight_format is not None:
        _check_weight_format(weight_format, prefix)


def _check_weight_format(weight_format: torch.Tensor, prefix: str) -> None:
    if weight_format.numel() != 1 or weight_format.is_floating_point():
        raise ValueError(
            f"'{prefix}weight_format' must be an integer scalar, got {weight_format.dtype} "
            f"{list(weight_format.shape)}"
        )
    code = int(weight_format.item())
    if code != ROW_MAJOR_FORMAT:
        raise ValueError(
            f"'{prefix}weight_format' is {code}: only row-major int8 weights (0) can be loaded; "
            "other codes are GPU-tiled layouts of old bitsandbytes versions (re-save with a recent one)"
        )


def _check_float_weight(weight: torch.Tensor, shape: tuple[int, int], key: str) -> None:
    if weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"'{key}' must be float16, bfloat16 or float32 (or int8 with SCB), got {weight.dtype}")
    if tuple(weight.shape) != tuple(shape):
        raise ValueError(f"'{key}' must have shape {list(shape)} (out, in), got {list(weight.shape)}")


# ----------------------------------------------------------------------------------------------
# Int8Params
# ----------------------------------------------------------------------------------------------


class Int8Params(nn.Parameter):
    """A linear weight that is 16/32-bit until quantized, then int8 ``CB`` (its data) plus fp32 ``SCB``.

    ``SCB is None`` means not quantized. Quantizing happens on ``quantize_()`` or on being put on a
    device (see the module docstring); a quantized weight never requires grad, and ``.to()`` only
    moves it (a requested dtype is ignored: CB stays int8 and SCB fp32).
    """

    def __new__(
        cls,
        data: Optional[torch.Tensor] = None,
        requires_grad: Optional[bool] = None,
        has_fp16_weights: bool = False,
        SCB: Optional[torch.Tensor] = None,  # noqa: N803  (bitsandbytes' name, used by its checkpoints)
    ):
        data = torch.empty(0) if data is None else data
        if SCB is not None and has_fp16_weights:
            raise ValueError("SCB must be None when has_fp16_weights=True (the 16-bit weight is the master copy)")
        if SCB is not None:
            if data.dim() != 2:
                raise ValueError(f"an int8 weight must be 2D [out, in], got shape {list(data.shape)}")
            check_int8_checkpoint(data, SCB, None, tuple(data.shape))
        elif data.dtype == torch.int8:
            raise ValueError("an int8 Int8Params needs its SCB scales (float32 [out_features])")
        if requires_grad is None:
            requires_grad = has_fp16_weights and SCB is None
        param = torch.Tensor._make_subclass(cls, data, requires_grad)
        param.has_fp16_weights = has_fp16_weights
        param.SCB = SCB
        return param

    @property
    def holds_int8(self) -> bool:
        # Not named is_quantized: that is torch.Tensor's flag for its own quantized dtypes, and
        # fake tensors (torch.compile) refuse tensors that set it.
        return self.SCB is not None

    @property
    def CB(self) -> Optional[torch.Tensor]:  # noqa: N802  (bitsandbytes' name)
        """The int8 weight [out, in] (the parameter's data), or None before quantization."""
        return self.data if self.holds_int8 else None

    def quantize_(self) -> "Int8Params":
        """Quantize in place (per output row absmax, ``ops.quantize_colwise``); no-op once quantized."""
        if self.holds_int8:
            return self
        if self.has_fp16_weights:
            raise ValueError(
                "quantize_() needs has_fp16_weights=False: with has_fp16_weights=True the 16-bit master "
                "weight is kept and quantized in every forward"
            )
        weight_int8, weight_absmax = ops.quantize_colwise(self.data)
        self.set_int8_(weight_int8, weight_absmax)
        return self

    def set_int8_(self, weight_int8: torch.Tensor, weight_absmax: torch.Tensor) -> None:
        """Hold ``weight_int8`` (as data) and ``weight_absmax`` (as SCB), keeping this Parameter object."""
        self.requires_grad_(False)
        self.grad = None
        self.data = weight_int8
        self.SCB = weight_absmax

    def to(self, *args, **kwargs) -> "Int8Params":
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if self.holds_int8:
            return self._moved(device, non_blocking)
        converted = Int8Params(super().to(*args, **kwargs), self.requires_grad, self.has_fp16_weights)
        if device is not None and device.type != "meta" and not self.has_fp16_weights:
            converted.quantize_()
        return converted

    def cuda(self, device=None, non_blocking: bool = False, **kwargs) -> "Int8Params":
        target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
        return self.to(target, non_blocking=non_blocking)

    def cpu(self, **kwargs) -> "Int8Params":
        return self.to("cpu")

    def _moved(self, device: Optional[torch.device], non_blocking: bool) -> "Int8Params":
        if device is None:
            return self
        weight_int8 = self.data.to(device, non_blocking=non_blocking)
        return Int8Params(weight_int8, False, self.has_fp16_weights, self.SCB.to(device, non_blocking=non_blocking))

    def converted_state(self, converted: torch.Tensor, fn) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(data, SCB) after ``converted = fn(self)``, SCB put through ``fn`` too but kept float32.

        ``Module._apply`` would keep only ``converted``'s data and drop freshly computed scales;
        SCB stays float32 whatever ``fn`` does to floating tensors (e.g. ``module.half()``).
        """
        if isinstance(converted, Int8Params) and converted.holds_int8:
            return converted.data, converted.SCB
        if not self.holds_int8:
            return converted.data, None
        scale = fn(self.SCB)
        return converted.data, scale if scale.dtype == torch.float32 else self.SCB.to(scale.device)

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        scale = None if self.SCB is None else self.SCB.clone()
        copied = Int8Params(self.data.clone(memory_format=torch.preserve_format), self.requires_grad,
                            self.has_fp16_weights, scale)
        memo[id(self)] = copied
        return copied

    def __reduce_ex__(self, protocol):
        # nn.Parameter's reduce rebuilds a plain Parameter and would drop SCB and the subclass.
        return Int8Params, (self.data, self.requires_grad, self.has_fp16_weights, self.SCB)

    def __repr__(self) -> str:
        state = "int8 + SCB" if self.holds_int8 else f"{self.dtype}, not yet quantized"
        return f"Int8Params({state}, shape={list(self.shape)}, device={self.device})"


# ----------------------------------------------------------------------------------------------
# The int8 linear computation
# ----------------------------------------------------------------------------------------------


class _Int8LinearFunction(torch.autograd.Function):
    """int8 forward; backward in 16-bit: to x through the (master or dequantized) weight, to W and bias."""

    @staticmethod
    def forward(x, weight_int8, weight_absmax, master_weight, bias, threshold, capacity, exact_decomposition):
        return ops.llm_int8_linear(x, weight_int8, weight_absmax, bias, threshold, capacity, exact_decomposition)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight_int8, weight_absmax, master_weight, bias, *_ = inputs
        weight_needs_grad = master_weight is not None and master_weight.requires_grad
        # x is kept only for the weight gradient: LoRA-style training of a frozen int8 layer needs none.
        ctx.save_for_backward(x if weight_needs_grad else None, weight_int8, weight_absmax, master_weight)
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad_out):
        x, weight_int8, weight_absmax, master_weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = (
                master_weight.to(ctx.x_dtype)
                if master_weight is not None
                else ops.dequantize_int8_weight(weight_int8, weight_absmax, ctx.x_dtype)
            )
            grad_x = grad_out.to(ctx.x_dtype) @ weight
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[3]:
            x_rows = x.reshape(-1, x.shape[-1]).to(grad_rows.dtype)
            grad_weight = (grad_rows.T @ x_rows).to(master_weight.dtype)
        if ctx.needs_input_grad[4]:
            grad_bias = grad_rows.sum(0).to(ctx.bias_dtype)
        return grad_x, None, None, grad_weight, grad_bias, None, None, None


# ----------------------------------------------------------------------------------------------
# Linear8bitLt
# ----------------------------------------------------------------------------------------------


def _needs_autograd(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class Linear8bitLt(nn.Linear):
    """``nn.Linear`` computing LLM.int8: int8 x int8 matmul plus 16-bit outlier columns of the input.

    ``threshold``: an input column with any ``|x| >= threshold`` is an outlier (0: none).
    ``outlier_capacity``: at most this many outlier columns per call are split out (fixed size,
    so the forward never synchronizes with the host); further ones go through int8. None: all
    ``in_features`` columns, i.e. LLM.int8 with no cap, at the cost of a [rows, in_features] buffer.
    ``exact_decomposition``: always use the LLM.int8 decomposition. By default, inputs of at most
    ``ops.SMALL_BATCH_ROWS`` rows (on Hopper GPUs ``ops.TENSOR_CORE_WEIGHT_ONLY_ROWS``, or
    ``ops.SMALL_PRODUCT_ROWS`` where rows * out * in is at most ``ops.SMALL_PRODUCT_MACS``) skip it
    for ``ops.int8_weight_linear`` (16-bit activations times the int8 weight): faster where the
    layer is bandwidth-bound or too small for the decomposition's fixed cost, and more accurate.
    """

    weight: Int8Params

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        has_fp16_weights: bool = False,
        threshold: float = 6.0,
        outlier_capacity: Optional[int] = ops.DEFAULT_OUTLIER_CAPACITY,
        exact_decomposition: bool = False,
        device=None,
        dtype=None,
    ):
        threshold = check_threshold(threshold)
        outlier_capacity = check_outlier_capacity(outlier_capacity)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.has_fp16_weights = has_fp16_weights
        self.threshold = threshold
        self.outlier_capacity = in_features if outlier_capacity is None else outlier_capacity
        self.exact_decomposition = exact_decomposition
        self.weight = Int8Params(self.weight.data, has_fp16_weights=has_fp16_weights)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, has_fp16_weights={self.has_fp16_weights}, "
                f"threshold={self.threshold}, outlier_capacity={self.outlier_capacity}, "
                f"exact_decomposition={self.exact_decomposition}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"input must be float16, bfloat16 or float32, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input's last dimension must be in_features={self.in_features}, got shape {list(x.shape)}")
        weight = self.weight
        if weight.holds_int8:
            weight_int8, weight_absmax, master = weight, weight.SCB, None
        else:
            # A 16/32-bit weight (has_fp16_weights=True, or not yet moved to its device) is
            # quantized for this call only: the stored master copy is never touched.
            with torch.no_grad():
                weight_int8, weight_absmax = ops.quantize_colwise(weight)
            master = weight
        if not _needs_autograd(x, master, self.bias):
            # Inference skips autograd.Function.apply, whose argument binding costs more host time
            # than the op's own launches at decode sizes.
            return ops.llm_int8_linear(x, weight_int8, weight_absmax, self.bias, self.threshold,
                                       self.outlier_capacity, self.exact_decomposition)
        return _Int8LinearFunction.apply(
            x, weight_int8, weight_absmax, master, self.bias, self.threshold, self.outlier_capacity,
            self.exact_decomposition,
        )

    def _apply(self, fn, recurse: bool = True):
        # Module._apply would replace only the weight's data, dropping SCB (see converted_state):
        # hide the weight from it (None entries are skipped) and convert it here.
        weight = self._parameters["weight"]
        self._parameters["weight"] = None
        try:
            super()._apply(fn, recurse)
        finally:
            self._parameters["weight"] = weight
        with torch.no_grad():
            grad = weight.grad
            self._set_weight(*weight.converted_state(fn(weight), fn))
            if grad is not None and not self.weight.holds_int8:
                self.weight.grad = fn(grad)
        return self

    def _set_weight(self, data: torch.Tensor, scale: Optional[torch.Tensor]) -> None:
        """Hold ``data`` (+ ``scale`` when int8), in the same Parameter object where torch allows it."""
        weight = self.weight
        if not torch._has_compatible_shallow_copy_type(weight, data):
            # e.g. a meta placeholder receiving real tensors: only a new Parameter can hold them.
            requires_grad = weight.requires_grad and scale is None
            self.weight = Int8Params(data, requires_grad, self.has_fp16_weights, scale)
        elif scale is None:
            weight.data = data
        else:
            weight.set_int8_(data, scale)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.weight.holds_int8:
            scale = self.weight.SCB
            destination[prefix + "SCB"] = scale if keep_vars else scale.detach()
            destination[prefix + "weight_format"] = torch.tensor(
                ROW_MAJOR_FORMAT, dtype=torch.uint8, device=scale.device
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Everything is validated before anything is assigned, so a bad checkpoint leaves the
        # module as it was (ValueError naming the key, raised at once).
        loaded = self._weight_from_state_dict(state_dict, prefix)
        self._check_bias_in_state_dict(state_dict, prefix)
        handled = {prefix + name for name in ("weight",) + _INT8_ONLY_KEYS}
        rest = {key: value for key, value in state_dict.items() if key not in handled}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if loaded is None:
            return  # no weight in the checkpoint: super() has reported it missing
        if prefix + "weight" in missing_keys:
            missing_keys.remove(prefix + "weight")
        self._set_weight(*loaded)

    def _weight_from_state_dict(self, state_dict, prefix) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """The validated weight to load, on this module's device: (CB, SCB), (float weight, None), or None if absent.

        A 16/32-bit checkpoint weight is quantized on arrival unless has_fp16_weights=True.
        """
        weight = state_dict.get(prefix + "weight")
        scb = state_dict.get(prefix + "SCB")
        shape = (self.out_features, self.in_features)
        if scb is not None or (weight is not None and weight.dtype == torch.int8):
            check_int8_checkpoint(weight, scb, state_dict.get(prefix + "weight_format"), shape, prefix)
            if self.has_fp16_weights:
                raise ValueError(
                    f"'{prefix}weight' is an int8 checkpoint; it loads into has_fp16_weights=False modules only"
                )
            device = self._load_device(weight)
            return weight.to(device), scb.to(device)
        if weight is None:
            return None
        _check_float_weight(weight, shape, prefix + "weight")
        weight = weight.to(self._load_device(weight))
        if not self.has_fp16_weights:
            return ops.quantize_colwise(weight)
        own_dtype = self.weight.dtype if self.weight.device.type != "meta" else weight.dtype
        return weight.to(own_dtype), None

    def _load_device(self, checkpoint_tensor: torch.Tensor) -> torch.device:
        # A meta module takes the checkpoint's tensors where they are (like load_state_dict(assign=True)).
        own = self.weight.device
        return checkpoint_tensor.device if own.type == "meta" else own

    def _check_bias_in_state_dict(self, state_dict, prefix) -> None:
        bias = state_dict.get(prefix + "bias")
        if bias is None or self.bias is None:
            return
        if not bias.is_floating_point() or tuple(bias.shape) != (self.out_features,):
            raise ValueError(
                f"'{prefix}bias' must be a floating tensor of shape [{self.out_features}], "
                f"got {bias.dtype} {list(bias.shape)}"
            )


# ----------------------------------------------------------------------------------------------
# Model conversion
# ----------------------------------------------------------------------------------------------


def replace_8bit_linear(
    model: nn.Module,
    threshold: float = 6.0,
    modules_to_not_convert: Optional[Iterable[str]] = ("lm_head",),
    has_fp16_weights: bool = False,
    outlier_capacity: Optional[int] = ops.DEFAULT_OUTLIER_CAPACITY,
    exact_decomposition: bool = False,
) -> list[str]:
    """Swap the model's ``nn.Linear`` modules for ``Linear8bitLt`` in place; return the converted names.

    Skipped: names in ``modules_to_not_convert`` (a name matches itself, its sub-modules, and any
    module whose dotted name ends with it, e.g. "lm_head" or "fc1"), and Linear layers whose
    weight is an ``nn.Embedding``'s weight (tied output embeddings). Weights on a real device are
    quantized there at once (unless ``has_fp16_weights``); meta weights stay placeholders and
    nothing is allocated. ValueError if the model is already converted or has nothing to convert.
    The whole plan is validated first and a failure during the swap restores every module, so on
    any error the model is unchanged (the original modules stay referenced until the end).
    """
    threshold = check_threshold(threshold)
    outlier_capacity = check_outlier_capacity(outlier_capacity)
    skip = tuple(modules_to_not_convert or ())
    plan = _plan_conversion(model, skip)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, parent, child_name, linear in plan:
            new = _int8_linear_like(linear, threshold, outlier_capacity, has_fp16_weights, exact_decomposition)
            setattr(parent, child_name, new)
            swapped.append((parent, child_name, linear))
    except BaseException:
        for parent, child_name, linear in reversed(swapped):
            setattr(parent, child_name, linear)
        raise
    return [name for name, *_ in plan]


def _plan_conversion(model: nn.Module, skip: tuple[str, ...]) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    already = [name for name, module in model.named_modules() if isinstance(module, Linear8bitLt)]
    if already:
        raise ValueError(
            f"the model is already converted to int8 (Linear8bitLt at '{already[0]}'); "
            "replace_8bit_linear must run once, on a model with nn.Linear layers"
        )
    tied = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    modules = dict(model.named_modules())
    plan = []
    for name, module in modules.items():
        if _is_convertible(module) and not _is_skipped(name, skip) and id(module.weight) not in tied:
            _check_convertible_dtype(name, module)
            parent_name, _, child_name = name.rpartition(".")
            plan.append((name, modules[parent_name], child_name, module))
    if not plan:
        raise ValueError(
            "the model has no nn.Linear layer to convert to int8 "
            f"(modules_to_not_convert={list(skip)}; tied output embeddings are skipped too)"
        )
    return plan


def _is_convertible(module: nn.Module) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly instead of calling out_proj, so that
    # Linear (NonDynamicallyQuantizableLinear) must keep a float weight.
    return isinstance(module, nn.Linear) and not isinstance(
        module, (Linear8bitLt, nn.modules.linear.NonDynamicallyQuantizableLinear)
    )


def _is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == key or name.endswith("." + key) or name.startswith(key + ".") for key in skip)


def _check_convertible_dtype(name: str, linear: nn.Linear) -> None:
    if linear.weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"'{name}.weight' must be float16, bfloat16 or float32 to convert, got {linear.weight.dtype}")


def _int8_linear_like(
    linear: nn.Linear, threshold: float, capacity: Optional[int], has_fp16_weights: bool, exact_decomposition: bool
) -> Linear8bitLt:
    # Built on meta so nothing is allocated or initialized, then given the Linear's own tensors.
    new = Linear8bitLt(linear.in_features, linear.out_features, linear.bias is not None, has_fp16_weights,
                       threshold, capacity, exact_decomposition, device="meta", dtype=linear.weight.dtype)
    weight = Int8Params(linear.weight.data, linear.weight.requires_grad and has_fp16_weights, has_fp16_weights)
    if weight.device.type != "meta" and not has_fp16_weights:
        weight.quantize_()
    new.weight = weight
    new.bias = linear.bias
    return new


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, int8 weights' SCB scales included.

    Computed from shapes and dtypes, so it also works on meta models without allocating.
    """
    tensors = [*model.parameters(), *model.buffers()]
    scales = [p.SCB for p in model.parameters() if isinstance(p, Int8Params) and p.holds_int8]
    return sum(t.numel() * t.element_size() for t in tensors + scales)


# ----------------------------------------------------------------------------------------------
# Placement (accelerate device maps)
# ----------------------------------------------------------------------------------------------


def _holds_int8(module: nn.Module) -> bool:
    """Whether ``module``'s weight is (or becomes, once put on a device) int8 + SCB."""
    return isinstance(module, Linear8bitLt) and not module.has_fp16_weights


def int8_weight_bytes(module: Linear8bitLt) -> int:
    """Bytes of an int8 Linear8bitLt weight once quantized: int8 [out, in] plus fp32 SCB [out]."""
    return module.out_features * module.in_features + 4 * module.out_features


def int8_module_sizes(model: nn.Module, dtype: Optional[torch.dtype] = None) -> dict[str, int]:
    """Bytes each module and tensor of a converted model takes once its int8 layers are quantized.

    The keys follow ``accelerate.utils.compute_module_sizes``: ``""`` for the whole model, every
    module's dotted name, and every parameter/buffer name, plus ``"<layer>.SCB"`` for the scales of
    each int8 layer. A ``Linear8bitLt`` weight counts int8 bytes plus its fp32 SCB, whether it is
    already int8 or still a 16/32-bit placeholder (e.g. on the meta device, after
    ``replace_8bit_linear`` under ``init_empty_weights``). Other floating tensors count their own
    size, or ``dtype``'s where that is smaller (as accelerate does); integer tensors their own.
    Tied weights count once, also before a transformers model on meta is tied.
    """
    dtype_size = None if dtype is None else torch.empty(0, dtype=dtype).element_size()
    sizes: dict[str, int] = {}

    def add(name: str, size: int) -> None:
        parts = name.split(".")
        for idx in range(len(parts) + 1):
            key = ".".join(parts[:idx])
            sizes[key] = sizes.get(key, 0) + size

    int8_weights = {
        f"{name}.weight" if name else "weight": module
        for name, module in model.named_modules() if _holds_int8(module)
    }
    # A transformers model built on meta is not tied yet: count its tied copies once (as transformers does).
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        module = int8_weights.get(name)
        if name in tied:
            continue
        if module is not None:
            add(name, module.out_features * module.in_features)
            add(name[: -len("weight")] + "SCB", 4 * module.out_features)
        elif dtype_size is not None and tensor.is_floating_point():
            add(name, tensor.numel() * min(dtype_size, tensor.element_size()))
        else:
            add(name, tensor.numel() * tensor.element_size())
    return sizes


def int8_special_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """``{"<layer>.weight": torch.int8}`` for every int8 Linear8bitLt, for accelerate's ``special_dtypes``.

    ``accelerate.infer_auto_device_map(model, max_memory, no_split_module_classes=...,
    special_dtypes=int8_special_dtypes(model))`` then sizes the int8 layers of a converted model by
    their int8 bytes also where the weights are still 16/32-bit placeholders (a meta model).
    accelerate counts only parameters and buffers, so the fp32 SCB scales (4 bytes per output row,
    ``4 / in_features`` of the int8 weight) are not in its sums: ``int8_module_sizes`` has them.
    """
    return {
        f"{name}.weight" if name else "weight": torch.int8
        for name, module in model.named_modules() if _holds_int8(module)
    }


def decoder_layers_per_device(device_map: dict) -> dict:
    """How many decoder layers (entries named ``*.layers.N``) a device map puts on each device."""
    counts: dict = {}
    for name, device in device_map.items():
        if ".layers." in name:
            counts[device] = counts.get(device, 0) + 1
    return counts
