"""Issue 15's hostile cases beyond the troubleshooting table: each is refused with exit 2 and one line
(or runs), never a traceback, never a user's file lost, nothing left behind.

Every case runs the CLI in-process on a tiny MLP with export off, so the whole file takes seconds.
"""

import os
import tracemalloc
import zipfile

import pytest
import torch
import yaml

import compress
from compress import cli
from tests.tiny_models import mlp, vector_data

FACTORIES = """
import torch


def boom():
    raise ValueError("weights_path is not set")


def mlp_with(hidden=32):
    from tests.tiny_models import mlp

    return mlp()
"""

BASE = {
    "name": "tiny",
    "model": {"factory": "tests.tiny_models:mlp"},
    "data": {"factory": "tests.tiny_models:vector_data"},
    "export": {"enabled": False},
}


def body(**changes) -> str:
    return yaml.safe_dump({**BASE, **changes})


def alias_bomb() -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    bomb = "\n".join("    " + line for line in lines)
    return body().replace("model:\n", f"model:\n  kwargs:\n{bomb}\n", 1)


def deep_nesting() -> str:
    return body() + "extra: " + "[" * 5000 + "]" * 5000 + "\n"


# (id, recipe text or bytes, exit status, fragments of the one error line)
RECIPES = [
    ("alias-bomb-nested", alias_bomb, 2, ["expands to more than", "aliases"]),
    ("deep-nesting", deep_nesting, 2, ["nested deeper than"]),
    ("not-utf8", lambda: body().encode() + b"# caf\xe9\n", 2, ["not UTF-8", "save the recipe as UTF-8"]),
    ("utf16", lambda: body().encode("utf-16"), 2, ["not UTF-8"]),
    ("duplicate-key", lambda: body() + "seed: 1\nseed: 2\n", 2, ["duplicate key 'seed'"]),
    ("list-as-key", lambda: body() + "? [1, 2]\n: 3\n", 2, ["invalid YAML (found unhashable key)"]),
    ("too-big", lambda: body() + "#" * 1_100_000 + "\n", 2, ["over the 1000000-byte limit"]),
    ("name-dotdot", lambda: body(name=".."), 2, ["not a plain folder name"]),
    ("seed-huge", lambda: body(seed=2**70), 2, ["seed: 1180591620717411303424 is out of range"]),
    ("batch-huge", lambda: body(report={"batch_sizes": [1e12]}), 2, ["report.batch_sizes[0]", "out of range"]),
    (
        "providers-many",
        lambda: body(export={"enabled": False, "check_providers": ["CPUExecutionProvider"] * 2_000}),
        2,
        ["check_providers", "at most 16"],
    ),
    (
        "variant-baseline",
        lambda: body(passes=[{"pass": "quantize", "onnx": [{"scheme": "int8_dynamic", "name": "baseline"}]}]),
        2,
        ["onnx variant name 'baseline' is the fp32 artifact's name"],
    ),
    (
        "variant-dotdot",
        lambda: body(passes=[{"pass": "quantize", "onnx": [{"scheme": "int8_dynamic", "name": ".."}]}]),
        2,
        ["onnx variant name '..' starts with '.'"],
    ),
    (
        "variant-twice",
        lambda: body(
            passes=[
                {"pass": "quantize", "onnx": [{"scheme": "int8_dynamic", "name": "q"}, {"scheme": "int4", "name": "q"}]}
            ],
            export={"enabled": False, "opset": 21},
        ),
        2,
        ["is used twice"],
    ),
    (
        "factory-raises",
        lambda: body(model={"factory": "hostile_factories:boom"}),
        2,
        [
            "model.factory `hostile_factories:boom` raised ValueError: weights_path is not set",
            "hostile_factories.py:",
        ],
    ),
    ("factory-builtin", lambda: body(model={"factory": "builtins:eval"}), 2, ["builtins cannot be factories"]),
    (
        "factory-kwargs-typo",
        lambda: body(model={"factory": "hostile_factories:mlp_with", "kwargs": {"hiden": 8}}),
        2,
        ["raised TypeError", "hiden", "model.kwargs"],
    ),
    ("threads-capped", lambda: body(report={"threads": 1024}), 0, ["usable cores"]),
]


def run_cli(tmp_path, text, *extra, capsys=None):
    (tmp_path / "hostile_factories.py").write_text(FACTORIES)
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = list(extra) or ["--out", str(tmp_path / "out")]
    return cli.main(["run", str(path), *args])


@pytest.mark.parametrize(("row", "make", "status", "fragments"), RECIPES, ids=[r[0] for r in RECIPES])
def test_hostile_recipe(row, make, status, fragments, tmp_path, capfd, monkeypatch):
    # capfd: warnings are printed on the terminal's own file descriptor (the console tee keeps fd 2 for them)
    monkeypatch.chdir(tmp_path)
    tracemalloc.start()
    try:
        code = run_cli(tmp_path, make())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capfd.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert peak < 200 << 20, f"{row}: {peak >> 20} MB of Python memory"
    if status == 2:
        assert not (tmp_path / "out").exists()  # refused before any write
        assert len(err.strip().splitlines()) <= 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == sorted(
        ["hostile_factories.py", "recipe.yaml", *(["out"] if status == 0 else [])]
    )


def test_out_dot_never_replaces_the_users_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "# my notes\n" + body()
    assert run_cli(tmp_path, text, "--out", ".") == 2
    err = capsys.readouterr().err
    assert "files modelpress did not write" in err and "recipe.yaml" in err
    assert (tmp_path / "recipe.yaml").read_text() == text
    assert not (tmp_path / "stages").exists()


@pytest.mark.parametrize("stray", ["stages/01-mine/notes.txt", "artifacts/config.json", "report.md"])
def test_users_files_where_modelpress_writes_are_refused(stray, tmp_path, capsys):
    out = tmp_path / "out"
    (out / stray).parent.mkdir(parents=True, exist_ok=True)
    (out / stray).write_text("mine")
    (out / "unrelated.txt").write_text("mine too")
    assert run_cli(tmp_path, body(), "--out", str(out)) == 2
    assert stray in capsys.readouterr().err
    assert (out / stray).read_text() == "mine" and (out / "unrelated.txt").read_text() == "mine too"


def test_a_folder_of_ours_beside_user_files_is_used_and_keeps_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_cli(tmp_path, body(passes=[{"pass": "magnitude_prune", "sparsity": 0.5}]), "--out", str(out)) == 0
    assert run_cli(tmp_path, body(passes=[]), "--out", str(out)) == 0  # rerun without the pass
    listed = yaml.safe_load((out / "run.json").read_text())["files"]
    assert "notes.txt" not in listed and "recipe.yaml" in listed
    assert not list((out / "stages").glob("01-*"))  # the dropped pass's stage is gone
    assert (out / "notes.txt").read_text() == "mine"


def test_run_json_that_is_a_list_is_refused_cleanly(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("[1, 2]")
    assert run_cli(tmp_path, body(), "--out", str(out)) == 2
    assert "run.json" in capsys.readouterr().err
    assert (out / "run.json").read_text() == "[1, 2]"


def test_internal_error_is_one_line_and_the_traceback_goes_to_run_log(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in modelpress")

    monkeypatch.setattr("compress.api.run_pipeline", broken)
    assert run_cli(tmp_path, body()) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error: ZeroDivisionError: a bug in modelpress" in err and "run.log" in err
    log = (tmp_path / "out" / "run.log").read_text()
    assert "Traceback" in log and "broken" in log


def test_disk_full_from_safetensors_is_one_line(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })")

    monkeypatch.setattr("safetensors.torch.save_model", full)
    assert run_cli(tmp_path, body(passes=[{"pass": "magnitude_prune", "sparsity": 0.5}])) == 2
    err = capsys.readouterr().err
    assert "disk full while writing" in err and "Traceback" not in err
    assert list(tmp_path.rglob("*.tmp")) == [] and list(tmp_path.rglob("*.safetensors")) == []


def test_zip_bomb_checkpoint_is_refused_before_loading(tmp_path, capsys):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (100 << 20))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    code = run_cli(tmp_path, body(model={"factory": "tests.tiny_models:mlp", "checkpoint": str(path)}))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2 and "zip bomb" in capsys.readouterr().err
    assert peak < 50 << 20


@pytest.mark.parametrize("relative", [False, True])  # a relative path was resolved, and the loop raised
def test_checkpoint_symlink_loop_is_one_line(tmp_path, capsys, relative):
    os.symlink(tmp_path / "b.pt", tmp_path / "a.pt")
    os.symlink(tmp_path / "a.pt", tmp_path / "b.pt")
    checkpoint = "a.pt" if relative else str(tmp_path / "a.pt")
    assert run_cli(tmp_path, body(model={"factory": "tests.tiny_models:mlp", "checkpoint": checkpoint})) == 2
    err = capsys.readouterr().err
    assert "a.pt: a symbolic link that leads nowhere" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_legacy_checkpoint_of_sparse_tensors_is_one_line(tmp_path, capsys):
    state = {k: v.to_sparse() for k, v in mlp().state_dict().items()}
    torch.save(state, tmp_path / "sparse.pt", _use_new_zipfile_serialization=False)  # the legacy format
    assert run_cli(tmp_path, body(model={"factory": "tests.tiny_models:mlp", "checkpoint": "sparse.pt"})) == 2
    err = capsys.readouterr().err
    assert "tensors that are not dense (fc1.weight" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_run_leaves_the_callers_module_unchanged(tmp_path):
    import compress
    from tests.tiny_models import vector_data

    model = mlp().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = {"passes": [{"pass": "magnitude_prune", "sparsity": 0.5}], "export": {"enabled": False}}
    result = compress.run(model, recipe, vector_data(), out_dir=tmp_path / "out")
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.model is not model and (result.model.fc1.weight == 0).any()
    inplace = compress.run(model, recipe, vector_data(), out_dir=tmp_path / "out", inplace=True)
    assert inplace.model is model and (model.fc1.weight == 0).any()


def _api_error(tmp_path, data, metric="accuracy") -> str:
    import compress
    from compress.core.errors import ModelpressError

    recipe = {"export": {"enabled": False}, "task": {"metric": "accuracy"}}
    with pytest.raises(ModelpressError) as caught:
        compress.run(mlp(), recipe, data, out_dir=tmp_path / "out", evaluator=metric)
    return str(caught.value)


def test_labels_out_of_range_are_refused_not_scored_zero(tmp_path):
    x = torch.randn(8, 12)
    message = _api_error(tmp_path, [(x, torch.full((8,), 7))])
    assert "labels range over [7, 7] but the model has 4 outputs" in message


def test_labels_as_a_list_work_through_the_api(tmp_path):
    import compress

    x = torch.randn(8, 12)
    result = compress.run(mlp(), {"export": {"enabled": False}}, [(x, [0, 1, 2, 3] * 2)], out_dir=tmp_path)
    assert 0.0 <= result.metrics["baseline"] <= 1.0


@pytest.mark.parametrize(("value", "fragment"), [("high", "returned str 'high'"), (float("nan"), "returned nan")])
def test_a_metric_that_is_not_a_finite_number_is_an_error(value, fragment, tmp_path):
    message = _api_error(tmp_path, [(torch.randn(8, 12), torch.zeros(8, dtype=torch.long))], lambda p, b: value)
    assert fragment in message


def test_a_corrupt_demo_cache_is_rebuilt_atomically(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from compress.demo import digits

    monkeypatch.setenv("MODELPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(digits, "train", lambda model, epochs: None)  # the cache is the point, not training
    (tmp_path / digits.CACHE_NAME).write_bytes(b"not safetensors")
    model = digits.pretrained_model(epochs=1)
    assert set(load_file(str(tmp_path / digits.CACHE_NAME))) == set(model.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == [digits.CACHE_NAME]  # no temporary file left


def test_a_folder_made_read_only_mid_run_is_one_line(tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def read_only(src, dst):
        if str(dst).endswith(".safetensors"):
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    assert run_cli(tmp_path, body(passes=[{"pass": "magnitude_prune", "sparsity": 0.5}])) == 2
    err = capsys.readouterr().err
    assert "cannot write there any more" in err and "Traceback" not in err
    assert list(tmp_path.rglob("*.tmp")) == []


def test_a_generator_split_is_refused_not_reported_empty(tmp_path):
    batches = ((torch.randn(4, 12), torch.zeros(4, dtype=torch.long)) for _ in range(2))
    assert "one-shot" in _api_error(tmp_path, batches)


def test_integer_tensors_in_a_checkpoint_are_not_cast_silently(tmp_path, capsys):
    from safetensors.torch import save_file

    state = {k: v.to(torch.int8) if k == "fc1.weight" else v for k, v in mlp().state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    model = {"factory": "tests.tiny_models:mlp", "checkpoint": str(tmp_path / "model.safetensors")}
    assert run_cli(tmp_path, body(model=model)) == 2
    assert "fc1.weight (torch.int8, model torch.float32)" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["", "{not json", "{}"])
def test_a_bad_hugging_face_folder_is_one_line(config, tmp_path, capsys):
    pytest.importorskip("transformers")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    assert run_cli(tmp_path, body(model={"checkpoint": str(folder)})) == 2
    err = capsys.readouterr().err
    assert "not a loadable Hugging Face folder" in err and "Traceback" not in err


def test_report_on_a_folder_whose_run_json_is_a_list_is_one_line(tmp_path, capsys):
    (tmp_path / "run.json").write_text("[]")
    (tmp_path / "recipe.yaml").write_text(body())
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a modelpress run folder" in capsys.readouterr().err


def test_a_later_batch_of_another_shape_is_one_line(tmp_path):
    labels = torch.zeros(4, dtype=torch.long)
    message = _api_error(tmp_path, [(torch.randn(4, 12), labels), (torch.randn(4, 7), labels)])
    assert "cannot run on an eval batch (input (4, 7) float32)" in message


def test_a_float64_model_runs_exports_and_passes_parity(tmp_path):
    """float64 weights and inputs through the API: every stage, the export and parity, no traceback."""
    batches = [(x.double(), y) for x, y in vector_data().eval]
    recipe = {
        "name": "f64",
        "passes": [{"pass": "magnitude_prune", "sparsity": 0.5}],
        "export": {"exporter": "torchscript"},
        "report": {"batch_sizes": [1], "warmup": 1, "iterations": 3},
    }
    result = compress.run(mlp().double(), recipe, {"eval": batches}, out_dir=tmp_path / "run")
    assert result.failures == []
    assert [a["status"] for a in result.artifacts] == ["passed", "passed"]
    assert all(a["parity"]["max_abs_diff"] < 1e-6 for a in result.artifacts)
