"""Quantization building blocks: bitsandbytes layers (torch side) and the accuracy budget."""
