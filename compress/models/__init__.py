"""The model and what it is judged on: the data splits (``data``: ``TaskData``, batches, input
structure), the evaluators and metrics (``evaluate``), loading models, checkpoints and data
factories (``loading``), Hugging Face encoders and STS-B (``hf``), layer selection by name or
pattern (``select``) and repeated blocks (``blocks``).

Text data for decoders (tokenized sentences, packing) and perplexity belong here too.
May import ``compress.core`` and ``compress.recipe`` only.
"""
