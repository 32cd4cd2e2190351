"""The run machinery (named ``engine``, not ``run``, because ``compress.run`` is the public
function): the pass pipeline with its per-stage evaluation (``pipeline``, ``context``), the
measurements of each stage's model (``metrics``: parameters, MACs, sparsity, fingerprints), the
saved stages and their fingerprints (``stages``), the run folder, its lock and its file list
(``folder``) and reloading a finished run (``reload``: ``compress.load``).

Runs passes through the registry, so it never imports ``compress.passes``; it imports nothing
from ``export``.
"""
