"""Training loops the passes share: the step loop with its schedule (``loop``), layer-wise
distillation of hidden states (``layerwise``) and feature distillation (``feature_distill``).
``torchrun`` process groups live in ``compress.core.distributed``, since logging needs them too.

May import ``compress.core``, ``models`` and ``pruning`` (attention helpers).
"""
