"""modelpress: prune, distill and quantize PyTorch models, export verified ONNX, report the gains.

    import compress
    result = compress.run(model, "recipe.yaml", data=compress.TaskData(eval=loader))
    result.model, result.metrics, result.report_path
    model = compress.load("runs/my-model")  # later: the compressed nn.Module, from the run folder
    found = compress.search(model, "recipe.yaml", data, objective="latency", max_drop=0.5)  # the best recipe

Importing this package loads torch and pydantic only; ONNX Runtime and transformers
are imported when a step needs them.
"""

# Importing the passes registers each one (``@register_pass``) before any recipe is read: the recipe
# room below holds only the table, so it never imports the passes that fill it.
import compress.passes  # noqa: E402, F401, I001
from compress.api import CompressionResult, report_run, run, run_recipe
from compress.core.config import PassConfig
from compress.core.errors import InputError, ModelpressError, RecipeError, SelectionError
from compress.engine.reload import load
from compress.recipe.registry import list_passes, register_pass
from compress.recipe.schema import Recipe, load_recipe
from compress.search import search  # the function: compress.search(model, recipe, data, ...)
from compress.models.data import TaskData
from compress.models.evaluate import EVALUATORS, Evaluator

__all__ = [
    "EVALUATORS",
    "CompressionResult",
    "Evaluator",
    "InputError",
    "ModelpressError",
    "PassConfig",
    "Recipe",
    "RecipeError",
    "SelectionError",
    "TaskData",
    "list_passes",
    "load",
    "load_recipe",
    "register_pass",
    "report_run",
    "run",
    "run_recipe",
    "search",
]
