"""The leaves every room may import: errors, atomic file writes, logging, the config base class,
user factories (``package.module:function``) and the torchrun process group.

Imports nothing from modelpress outside this package.
"""
