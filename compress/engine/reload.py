"""``compress.load``: the compressed ``nn.Module`` of a run folder, rebuilt in torch.

A stage folder holds the weights after its pass and the record of its structural edits
(e.g. the channels structured pruning removed). Loading replays those edits on the
uncompressed model, then loads the stage's weights: the same path a resumed run takes.
"""

from pathlib import Path
from typing import Any

import torch

from compress.core.errors import InputError
from compress.core.untrusted import escape, open_read
from compress.engine.folder import read_run_folder
from compress.engine.stages import StageResult, load_stage_weights, read_stages
from compress.models.blocks import without_nested_tensor_fast_path
from compress.recipe.registry import get_pass
from compress.recipe.schema import load_recipe


def _pick(stages: list[StageResult], stage: str | int, out: Path) -> StageResult:
    if not stages:
        raise InputError(f"{out}: no completed stage; run 'modelpress run' into this folder first")
    if stage == "final":
        return stages[-1]
    for candidate in stages:
        if stage in (candidate.index, candidate.name, candidate.folder_name):
            return candidate
    names = ", ".join(s.name for s in stages)
    raise InputError(f"{out}: no stage {stage!r}; completed stages: {names} (or 'final', or an index)")


def _inputs_from_onnx(out: Path) -> Any:
    """Zero inputs shaped like the exported model's (dynamic axes as 2): enough to trace the graph."""
    import numpy as np
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from compress.models.data import rebuild_inputs

    path = next(iter(sorted((out / "artifacts").glob("*.onnx"))), None)
    if path is None:
        raise InputError(f"{out}: no ONNX artifact to take input shapes from; pass example_inputs=")
    with open_read(path, "ONNX artifact") as handle:  # no link, no FIFO: the folder may come from elsewhere
        graph = onnx.load_model_from_string(handle.read()).graph
    initializers = {init.name for init in graph.initializer}
    names, tensors = [], []
    for value in graph.input:
        if value.name in initializers:
            continue
        kind = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in kind.shape.dim]
        names.append(value.name)
        tensors.append(torch.from_numpy(np.zeros(shape, dtype=tensor_dtype_to_np_dtype(kind.elem_type))))
    # The exporter names inputs as flatten_inputs does: "input", "input_0..", or the keyword names.
    template = tensors[0] if names == ["input"] else (tuple(tensors) if names[0] == "input_0" else dict.fromkeys(names))
    return rebuild_inputs(template, tensors)


# Factories the folder may name without the caller's consent: modelpress's own code.
OWN_FACTORIES = "compress."


def _check_factory_consent(out: Path, factory: str | None, trust_code: bool) -> None:
    """Consent to run code is the caller's: a factory written in the folder's recipe grants nothing."""
    if factory and not factory.startswith(OWN_FACTORIES) and not trust_code:
        raise InputError(
            f"{out}: the run's recipe names the model factory {escape(factory)!r}; calling it runs code the "
            "folder chose: pass trust_code=True if you trust this folder, or model=<the uncompressed model>"
        )


def load(
    run_dir: str | Path,
    stage: str | int = "final",
    *,
    model: torch.nn.Module | None = None,
    example_inputs: Any = None,
    trust_checkpoint: bool = False,
    trust_code: bool = False,
) -> torch.nn.Module:
    """The model of a run folder after ``stage`` (``"final"``, a stage name such as ``"distill"``, or an index).

    ``model`` is the uncompressed model to rebuild on, for runs made from the Python API
    with an in-memory model; its weights are replaced, and it is modified in place.
    Without it, the model is built as the run's recipe says (``model.factory`` /
    ``model.checkpoint``). Importing a factory named by a run folder runs code the folder chose
    (``os:system`` would do), so a factory outside modelpress's own ``compress`` package is called
    only with ``trust_code=True``. ``example_inputs`` (one batch of model inputs) trace
    the model to replay structural pruning; by default they are zeros shaped like the
    run's ONNX inputs. Torch-side quantization (bitsandbytes) is applied again as recorded.
    ``trust_checkpoint`` lets a pickled checkpoint be fully unpickled (it can run code); the folder's
    own recipe cannot grant that (its ``model.trust_checkpoint`` is ignored).
    """
    out = Path(run_dir)
    run_info = read_run_folder(out)
    recipe = load_recipe(out / "recipe.yaml")
    target = _pick(read_stages(out), stage, out)
    if model is None:
        if recipe.model is None:
            raise InputError(
                f"{out}: the run's recipe names no model factory or checkpoint (a Python API run); "
                "pass the uncompressed model: compress.load(run_dir, model=build_my_model())"
            )
        from compress.models.loading import load_model

        _check_factory_consent(out, recipe.model.factory, trust_code)
        search_dir = run_info.get("search_dir") or None
        # Consent to unpickle is the caller's: a trust_checkpoint written in the folder's recipe grants nothing.
        spec = recipe.model.model_copy(update={"trust_checkpoint": trust_checkpoint})
        model = load_model(spec, Path(str(search_dir)) if search_dir else None)
    edits = [s for s in read_stages(out)[1 : target.index + 1]]
    if any(get_pass(s.pass_name).restore is not None for s in edits):
        inputs = example_inputs if example_inputs is not None else _inputs_from_onnx(out)
        for done in edits:
            restore = get_pass(done.pass_name).restore
            if restore is not None:
                restore(model, done.record, inputs)
    if target.index > 0:
        load_stage_weights(out, target, model)
    for done in edits:
        after_load = get_pass(done.pass_name).after_load
        if after_load is not None:
            model = after_load(model, done.record, done.config)
    without_nested_tensor_fast_path(model)  # as the run computed it (see run_pipeline)
    return model.eval()
