"""Training against 4-bit weights: chosen Linear layers are seen through their int4 rounding.

A distilled model's weights leave any quantization grid, and int4 then costs what training gained: on
SmolLM2 pruned and distilled, int4 by ``block_minimum`` agreed with its own fp32 source on 0.70 of
teacher-forced tokens (ORT's k_quant 0.66, RTN 0.51). Here each chosen
weight is replaced in the forward pass by its rounding on ``export/quantize/block_minimum``'s grid
(per block of ``block_size`` input channels, 16 levels from the block's minimum to its maximum), and
the gradient passes straight through to the float weight (the straight-through estimator, as in
LLM-QAT and torchao's QAT). On exit the weights are left rounded, so the torch model, its fp32
export and the int4 artifact (which ``block_minimum`` packs exactly) are the same model.

Two grids (``GRIDS``): ``block_minimum`` keeps each block's own minimum (what a Q4_1 checkpoint such as
SmolLM2's GGUF already sits on), ``symmetric`` rounds to ``k x scale`` with k in -7..7 and ``scale =
max |w| / 7``: MatMulNBits' format without zero points or offsets (onnxruntime-genai's builder writes
it), which ``block_minimum`` packs as one MatMulNBits per weight instead of four ops, the fastest
layout on CPU: SmolLM2 with 15 of 30 blocks decoded 6.47x its fp32 baseline at batch 1 trained on
this grid, 3.82x on the block-minimum grid (reports/smollm2-full/notes.md).

``inputs="int8"`` also rounds each chosen layer's input as MatMulNBits does at ``accuracy_level`` 4,
its fast CPU kernel (MLAS quantizes the activations per block of ``block_size`` along K to int8 with
``scale = max|x| / 127``, round to nearest), again straight-through. Level 4's int8 inputs alone cost
SmolLM2 0.03-0.05 of teacher-forced top-1 (reports/smollm2-full/notes.md: 0.954 against 1.000 at
level 1), and level 1 decodes 9.4x slower there; trained through both roundings, the torch model
computes what the level-4 artifact computes.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.utils import parametrize

LEVELS = 16  # 4 bits, as block_minimum packs them
INT8_STEPS = 127  # MLAS's int8 activations at accuracy_level 4: symmetric, -127..127
SYMMETRIC_STEPS = 7  # codes 8 - 7 .. 8 + 7 of MatMulNBits' 0..15 around its implied zero point 8


class _BlockRounding(torch.nn.Module):
    """weight [out, in] -> its rounding per block of ``block_size`` along ``in``, gradient straight through."""

    def __init__(self, block_size: int):
        super().__init__()
        self.block_size = block_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rows, width = weight.shape
        blocks = weight.reshape(rows, width // self.block_size, self.block_size)
        rounded = self.round_blocks(blocks).reshape(rows, width)
        return weight + (rounded - weight).detach()


class BlockMinimumRounding(_BlockRounding):
    """16 levels from each block's minimum to its maximum (``block_minimum``'s asymmetric grid)."""

    def round_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        scale = torch.where(high > low, (high - low) / (LEVELS - 1), torch.ones_like(high))
        return low + torch.clamp(torch.round((blocks - low) / scale), 0, LEVELS - 1) * scale


class SymmetricRounding(_BlockRounding):
    """``k x max|w| / 7`` per block, k in -7..7 (MatMulNBits without zero points or offsets)."""

    def round_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        top = blocks.abs().amax(-1, keepdim=True)
        scale = torch.where(top > 0, top / SYMMETRIC_STEPS, torch.ones_like(top))
        return torch.round(blocks / scale) * scale


GRIDS = {"block_minimum": BlockMinimumRounding, "symmetric": SymmetricRounding}


def int8_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``x`` [..., K] rounded to int8 per block of ``block_size`` along K (``max|x| / 127`` each), as
    MatMulNBits quantizes its input at accuracy_level 4; gradient straight through."""
    # in fp32 as MLAS does: under bf16 autocast a bf16 input's own step would be as coarse as int8's
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    top = blocks.abs().amax(-1, keepdim=True)
    scale = torch.where(top > 0, top / INT8_STEPS, torch.ones_like(top))
    rounded = (torch.round(blocks / scale) * scale).reshape(x.shape).to(x.dtype)
    return x + (rounded - x).detach()


def _int8_input_hook(block_size: int):
    def hook(module, args):
        return (int8_blocks(args[0], block_size), *args[1:])

    return hook


def roundable(module: torch.nn.Module, block_size: int) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, torch.nn.Linear) and weight is not None and weight.shape[1] % block_size == 0


@contextlib.contextmanager
def rounded_weights(
    modules: dict[str, torch.nn.Module], block_size: int, grid: str = "block_minimum", inputs: str = "float"
) -> Iterator[list[str]]:
    """While open, the Linear layers of ``modules`` whose input width ``block_size`` divides compute with
    their weights rounded on ``grid`` (a key of ``GRIDS``) and, for ``inputs="int8"``, their inputs
    rounded as accuracy_level 4 does; on exit their weights are the rounded values and the inputs are
    left alone. Yields the layers' names."""
    chosen = {name: module for name, module in modules.items() if roundable(module, block_size)}
    hooks, registered, opened = [], [], False
    try:
        # inside the try: should a registration fail partway, the layers already done get their own
        # weights back (nothing was trained through the rounding yet)
        for module in chosen.values():
            parametrize.register_parametrization(module, "weight", GRIDS[grid](block_size))
            registered.append(module)
            if inputs == "int8":
                hooks.append(module.register_forward_pre_hook(_int8_input_hook(block_size)))
        opened = True
        yield list(chosen)
    finally:
        for hook in hooks:
            hook.remove()
        for module in registered:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=opened)
