"""Hugging Face transformers integration: ``Int8Config`` and the quantizer behind ``from_pretrained``.

Importing this module registers ``quant_method="llmint8"`` with transformers, so that

    AutoModelForCausalLM.from_pretrained(path, quantization_config=Int8Config(), device_map=...)

loads a 16-bit checkpoint into int8 one weight at a time (each is materialized on its device and
quantized there before the next is read, so the device never holds a 16-bit copy of the whole
model), ``save_pretrained`` writes the int8 weights in the bitsandbytes layout (``weight``,
``SCB``, ``weight_format``) with the config in config.json, and ``from_pretrained`` of that
directory (after ``import llmint8.hf``) restores the int8 model without re-quantizing.

Without a ``device_map`` the model is placed on the current CUDA device when there is one, else on
the CPU; inputs must be moved to ``model.device``.

Works with transformers 5.x from 5.17 on: the routing of ``weight``/``SCB``/``weight_format`` into
one deserialization op is declared by ``get_weight_conversions`` itself, since older 5.x releases do
not derive it from ``serialized_names``/``get_load_operations``.

Limits of transformers' plug-in API, and what this module does about them:
- An error inside a conversion op (e.g. a checkpoint with a missing ``SCB``) is caught by
  transformers, logged in its load report, and re-raised as a RuntimeError pointing at that report;
  the ValueError naming the key is in the report.
- Offload is refused: a device_map that puts modules on "disk", or on "cpu" next to GPU modules
  (what ``device_map="auto"`` does with layers that do not fit on the GPUs), raises ValueError.
  accelerate runs offloaded modules on the GPU, re-materializing their weights in every forward
  through hooks that special-case bitsandbytes' ``Int8Params``/``Linear8bitLt`` by class name and
  reach for attributes this package does not have (``module.state``). A model wholly on the CPU
  (``device_map={"": "cpu"}``, or ``"auto"`` on a machine without a GPU) is not offloaded: the
  CPU kernels run it in int8.

Multi-GPU (``device_map="auto"``/``"balanced"``/``"sequential"``, with ``max_memory``):
transformers sizes modules through ``HfQuantizer.param_element_size`` (5.17 and 5.2x alike; there is
no ``adjust_target_dtype`` in transformers 5), so an int8 layer counts its int8 weight plus its
fp32 SCB, not 16 bits per weight, and about twice as many decoder layers fit per GPU.
``adjust_max_memory`` keeps 10% of each GPU's budget free (as bitsandbytes does) for the 16-bit
copy of the weight being quantized while loading, and for activations.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import get_module_from_name
from transformers.utils.quantization_config import QuantizationConfigMixin

from . import ops
from .nn import (
    Int8Params,
    Linear8bitLt,
    check_int8_checkpoint,
    check_outlier_capacity,
    check_threshold,
    int8_weight_bytes,
    replace_8bit_linear,
)

__all__ = ["Int8Config", "Int8HfQuantizer", "QUANT_METHOD"]

QUANT_METHOD = "llmint8"


class Int8Config(QuantizationConfigMixin):
    """LLM.int8 settings for ``from_pretrained``; saved as config.json's ``quantization_config``.

    ``modules_to_not_convert``: module names kept in 16-bit, in addition to transformers' default
    skips (output embeddings, tied weights, ``_keep_in_fp32_modules``). ``outlier_capacity``: as
    ``Linear8bitLt``'s (None: every input column; worth it for small models, whose calls can
    exceed 64 outlier columns — ``llmint8 eval`` reports the most per call).
    """

    def __init__(
        self,
        threshold: float = 6.0,
        modules_to_not_convert: Optional[list[str]] = None,
        outlier_capacity: Optional[int] = ops.DEFAULT_OUTLIER_CAPACITY,
        quant_method: str = QUANT_METHOD,
    ):
        # quant_method is accepted only so that from_dict can read back what to_dict wrote.
        if quant_method != QUANT_METHOD:
            raise ValueError(f"quant_method must be '{QUANT_METHOD}', got {quant_method!r}")
        if isinstance(modules_to_not_convert, str):
            raise TypeError("modules_to_not_convert must be a list of module names, got a single string")
        self.quant_method = QUANT_METHOD
        self.threshold = check_threshold(threshold)
        self.modules_to_not_convert = None if modules_to_not_convert is None else list(modules_to_not_convert)
        self.outlier_capacity = check_outlier_capacity(outlier_capacity)


class Int8Quantize(ConversionOps):
    """On-the-fly loading: a 16/32-bit checkpoint weight, already on its device, becomes int8 there."""

    def __init__(self, hf_quantizer: "Int8HfQuantizer"):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict: dict[str, Any], model=None, **kwargs) -> dict[str, torch.Tensor]:
        return {name: Int8Params(_single(value)).quantize_() for name, value in input_dict.items()}


class Int8Deserialize(ConversionOps):
    """Pre-quantized loading: ``weight`` + ``SCB`` + ``weight_format`` of one module become its Int8Params.

    Having ``hf_quantizer`` tells transformers not to cast these tensors to the model's dtype
    (SCB must stay float32); the non-quantized weights routed here are cast by this op instead.
    """

    def __init__(self, hf_quantizer: "Int8HfQuantizer"):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict: dict[str, Any], model=None, full_layer_name: str = "", **kwargs):
        tensors = {key: _single(value) for key, value in input_dict.items()}
        module, _ = get_module_from_name(model, full_layer_name)
        if not isinstance(module, Linear8bitLt):
            placeholder = model.get_parameter_or_buffer(full_layer_name)
            return {key: value.to(placeholder.dtype) for key, value in tensors.items()}
        prefix = full_layer_name.removesuffix("weight")
        weight, scb = tensors.get("weight"), tensors.get("SCB")
        check_int8_checkpoint(weight, scb, tensors.get("weight_format"),
                              (module.out_features, module.in_features), prefix)
        module._is_hf_initialized = True
        return {"weight": Int8Params(weight, SCB=scb.to(weight.device))}


def _single(value):
    # Converters collect each source key's tensors in a list (several for merged experts).
    return value[0] if isinstance(value, list) else value


class Int8HfQuantizer(HfQuantizer):
    """Swaps the model's nn.Linear for Linear8bitLt before loading and quantizes/deserializes weights."""

    requires_calibration = False
    quantization_config: Int8Config
    serialized_names = {"weight": ["weight", "SCB", "weight_format"]}

    @property
    def quantized_element_size(self) -> float:
        return 1

    def param_element_size(self, model, param_name: str, param: torch.Tensor) -> float:
        # What transformers' device-map sizing (compute_module_sizes, caching_allocator_warmup)
        # counts per element. The weights of Linear8bitLt are 16/32-bit meta placeholders here:
        # count the int8 weight plus its fp32 SCB (4 bytes per output row) instead.
        module, name = get_module_from_name(model, param_name)
        if name == "weight" and isinstance(module, Linear8bitLt) and not module.has_fp16_weights:
            return int8_weight_bytes(module) / param.numel()
        return param.element_size()

    def adjust_max_memory(self, max_memory: dict) -> dict:
        # Headroom on each GPU for the 16-bit weight being quantized while loading and for the
        # activations; the CPU's budget is left as it is.
        return {key: value if key in ("cpu", "disk") else value * 0.90 for key, value in max_memory.items()}

    def validate_environment(self, *args, device_map=None, **kwargs):
        # Called with the caller's device_map, and again with the one inferred for "auto" & co.
        if not isinstance(device_map, dict):
            return
        places = {str(place) for place in device_map.values()}
        if "disk" in places:
            raise ValueError(
                "device_map places modules on 'disk', which llmint8 does not support (no offload of "
                "int8 layers); use GPU placements, or device_map={'': 'cpu'} to run the whole model on "
                "the CPU (the CPU kernels run int8 too)"
            )
        if "cpu" in places and places - {"cpu"}:
            on_cpu = [name or "<the whole model>" for name, place in device_map.items() if str(place) == "cpu"]
            raise ValueError(
                f"device_map places {len(on_cpu)} module(s) on the CPU next to GPU modules "
                f"({', '.join(on_cpu[:3])}{', ...' if len(on_cpu) > 3 else ''}): llmint8 does not support "
                "CPU offload (accelerate would run those layers on the GPU through hooks written for "
                "bitsandbytes). The int8 model does not fit in the GPU memory given: raise max_memory or "
                "use more GPUs, or run the whole model on the CPU with device_map={'': 'cpu'}"
            )

    def update_device_map(self, device_map):
        # No device_map: the whole model goes to the current CUDA device when there is one (as with
        # bitsandbytes), else to the CPU. Callers move their inputs to ``model.device``.
        if device_map is None:
            return {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
        return device_map

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module, name = get_module_from_name(model, param_name)
        return isinstance(module, Linear8bitLt) and name == "weight"

    def _process_model_before_weight_loading(self, model, **kwargs):
        config = self.quantization_config
        skip = self.get_modules_to_not_convert(model, config.modules_to_not_convert, model._keep_in_fp32_modules,
                                               add_default_skips=True)
        replace_8bit_linear(model, threshold=config.threshold, modules_to_not_convert=skip,
                            outlier_capacity=config.outlier_capacity)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # Frozen int8 layers pass gradients to their inputs, so adapters (PEFT LoRA) train.
        return True

    def get_quantize_ops(self):
        return Int8Quantize(self)

    def get_load_operations(self) -> dict:
        return {"deserialize": Int8Deserialize}

    def get_weight_conversions(self):
        # Routes each module's serialized names (weight + SCB + weight_format) into one Int8Deserialize.
        # transformers >= 5.2x derives this from serialized_names/get_load_operations in the base class,
        # but older 5.x (e.g. 5.17) has neither hook and returns [] here: without this override, SCB and
        # weight_format would be reported UNEXPECTED and the int8 weight loaded without its scales.
        from transformers.core_model_loading import WeightConverter

        if not self.pre_quantized:
            return []
        return [WeightConverter(list(names), param, [Int8Deserialize(self)])
                for param, names in self.serialized_names.items()]


def _register() -> None:
    # Importing twice (e.g. importlib.reload) must not fail on transformers' duplicate check.
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(Int8Config)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(Int8HfQuantizer)


_register()
