"""The leaves every room may import: errors, atomic file writes, opening a folder's files as
untrusted (``untrusted``), logging, the config base class, user factories
(``package.module:function``) and the torchrun process group.

Imports nothing from modelpress outside this package.
"""
