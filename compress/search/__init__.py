"""``modelpress search``: the fastest (or smallest) model within an accuracy budget, measured, as a recipe.

    result = compress.search(model, "recipe.yaml", data, objective="latency", max_drop=0.5, batch_size=32)
    result.chosen, result.recipe_path   # then: modelpress run <search folder>/recipe.yaml

Modules: ``spec`` (the recipe's ``search:`` section), ``space`` (candidates from the model),
``trials`` (one ``compress.run`` per trial, scored and timed, recorded for resume),
``strategy`` (successive halving, the front), ``report`` (report.md, plots, the chosen recipe),
``search_folder`` (which folder may receive a search), ``rungs`` (the trials, rung by rung, and the
choice), ``driver`` (the search itself: folder, space, rungs, report).

``compress.search`` is the function below: ``compress/__init__.py`` binds the name to it, so
import the modules with ``from compress.search.space import build_space`` (not ``import ... as``).
"""

from compress.recipe.search_spec import SearchSpec


def search(model, recipe=None, data=None, **options):
    """Search ``recipe``'s passes for ``model`` on ``data``; see ``compress.search.driver.run_search``
    for the options (objective, batch_size, max_drop, budget_minutes, out_dir, ...)."""
    from compress.search.driver import run_search  # lazily: the driver needs ONNX Runtime

    return run_search(model, recipe, data, **options)


__all__ = ["SearchSpec", "search"]
