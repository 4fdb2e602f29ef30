"""Layers and the GPT model, built on tinygpt's tensors."""

from tinygpt.nn.attention import KVCache, MultiHeadAttention
from tinygpt.nn.gpt import FeedForward, GPTModel, TransformerBlock
from tinygpt.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear
from tinygpt.nn.lora import LoRALayer, LoRALinear, apply_lora, lora_parameter_report, merge_lora
from tinygpt.nn.module import Module, Parameter, Sequential, evaluating
from tinygpt.nn.quantization import (
                                     QuantizedEmbedding,
                                     QuantizedLinear,
                                     QuantizedWeight,
                                     quantize,
                                     quantized_mode,
)

__all__ = [
    "Dropout", "Embedding", "FeedForward", "GELU", "GPTModel", "KVCache", "LayerNorm",
    "Linear", "LoRALayer", "LoRALinear", "Module", "MultiHeadAttention", "Parameter",
    "QuantizedEmbedding", "QuantizedLinear", "QuantizedWeight", "Sequential",
    "TransformerBlock", "apply_lora", "evaluating", "lora_parameter_report", "merge_lora",
    "quantize", "quantized_mode",
]
