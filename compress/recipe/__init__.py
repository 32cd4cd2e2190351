"""The recipe: its schema (``schema``: ``Recipe``, its sections, ``load_recipe``), the safe YAML
reader (``yaml_safe``), one-line validation messages (``validation``), the pass registry
(``registry``: recipe name -> config class and ``apply``), the ``search:`` section
(``search_spec``) and the generated key reference (``describe``: ``modelpress passes`` and
``modelpress schema``).

May import ``compress.core`` only. The registry is a table filled by the passes themselves
(``@register_pass``); ``compress/__init__.py`` imports ``compress.passes``, so every pass is
registered before any recipe is read, and this room never imports the passes.
"""
