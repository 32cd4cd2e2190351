"""Every row of the README's troubleshooting table: the bad input, the exit status, the message.

Each case writes its inputs into ``tmp_path`` and runs the CLI in-process. The checks are the
same for all rows: the exit status, the message (what, where, how to fix), no traceback, and no
half-written file left in the output folder.
"""

import errno
import os

import pytest
import torch
import yaml

from compress import cli
from tests.tiny_models import mlp

FACTORIES = """
import torch
from compress.models.data import TaskData
from tests.tiny_models import vector_data


def wrong_width():
    return TaskData(eval=[(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))])


def no_calibration():
    data = vector_data()
    return TaskData(eval=data.eval, train=[], calibration=[])


def unlabelled_train():
    data = vector_data()
    return TaskData(eval=data.eval, train=[x for x, _ in data.eval])


class Eigen(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigh(x[:, :4, None] * x[:, None, :4]).eigenvalues  # 4 outputs: 4 classes
"""


def recipe(**sections) -> dict:
    body = {
        "name": "tiny",
        "model": {"factory": "tests.tiny_models:mlp"},
        "data": {"factory": "tests.tiny_models:vector_data"},
        "passes": [],
        "export": {"enabled": False},
    }
    body.update(sections)
    return body


def checkpoint_case(write_checkpoint):
    def setup(tmp_path):
        path = tmp_path / "model.pt"
        write_checkpoint(path)
        return recipe(model={"factory": "tests.tiny_models:mlp", "checkpoint": str(path)})

    return setup


def truncated(path):
    torch.save(mlp().state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])


def with_nan(path):
    state = mlp().state_dict()
    state["fc1.weight"][0, 0] = float("nan")
    torch.save(state, path)


def renamed_keys(path):
    torch.save({k.replace("fc1", "encoder"): v for k, v in mlp().state_dict().items()}, path)


class Payload:
    """Unpickling this runs ``touch``: the malicious checkpoint of the security row."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious(path):
    torch.save({"fc1.weight": Payload(path.parent / "pwned")}, path)


def raw_yaml(text):
    return lambda tmp_path: text


# (row id, setup(tmp_path) -> recipe dict or YAML text, extra CLI args, exit status, message fragments)
CASES = [
    (
        "checkpoint-missing",
        lambda t: recipe(model={"factory": "tests.tiny_models:mlp", "checkpoint": "none.pt"}),
        [],
        2,
        ["none.pt: file not found", "check model.checkpoint"],
    ),
    ("checkpoint-truncated", checkpoint_case(truncated), [], 2, ["cannot be read", "truncated, corrupt"]),
    (
        "checkpoint-corrupt",
        checkpoint_case(lambda p: p.write_bytes(os.urandom(512))),
        [],
        2,
        ["cannot be read", "truncated, corrupt or not a checkpoint"],
    ),
    (
        "checkpoint-wrong-format",
        checkpoint_case(lambda p: p.write_text('{"weights": [1, 2]}')),
        [],
        2,
        ["cannot be read"],
    ),
    (
        "checkpoint-keys",
        checkpoint_case(renamed_keys),
        [],
        2,
        ["does not fit the model", "missing: fc1.bias, fc1.weight", "unexpected: encoder.bias, encoder.weight"],
    ),
    ("checkpoint-nan", checkpoint_case(with_nan), [], 2, ["NaN or Inf values in fc1.weight", "earlier checkpoint"]),
    (
        "checkpoint-pickle",
        checkpoint_case(malicious),
        [],
        2,
        ["refused", "arbitrary unpickling", "posix.system", "--trust-checkpoint"],
    ),
    ("recipe-yaml", raw_yaml("name: tiny\npasses: [\n"), [], 2, ["invalid YAML", "fix the syntax there"]),
    (
        "recipe-unknown-pass",
        lambda t: recipe(passes=[{"pass": "prune_magnitude"}]),
        [],
        2,
        ["unknown pass 'prune_magnitude'", "did you mean 'magnitude_prune'"],
    ),
    (
        "recipe-unknown-key",
        lambda t: recipe(passes=[{"pass": "magnitude_prune", "sparsty": 0.5}]),
        [],
        2,
        ["unknown key 'sparsty'", "did you mean 'sparsity'"],
    ),
    (
        "recipe-type",
        lambda t: recipe(passes=[{"pass": "magnitude_prune", "sparsity": "half"}]),
        [],
        2,
        ["passes[0] (magnitude_prune).sparsity"],
    ),
    (
        "recipe-range",
        lambda t: recipe(passes=[{"pass": "structured_prune", "ratio": 1.5}]),
        [],
        2,
        ["ratio: 1.5 is out of range"],
    ),
    (
        "recipe-negative-temperature",
        lambda t: recipe(passes=[{"pass": "distill", "temperature": -1}]),
        [],
        2,
        ["temperature: -1 is out of range"],
    ),
    (
        "recipe-contradiction",
        lambda t: recipe(passes=[{"pass": "quantize", "onnx": [{"scheme": "int4"}]}]),
        [],
        2,
        ["needs opset >= 21", "set export.opset: 21"],
    ),
    (
        "recipe-factory-import",
        lambda t: recipe(model={"factory": "nowhere.models:net"}),
        [],
        2,
        ["model.factory", "nowhere"],
    ),
    (
        "data-empty-calibration",
        lambda t: recipe(
            data={"factory": "factories:no_calibration"},
            passes=[{"pass": "quantize", "onnx": [{"scheme": "int8_static"}]}],
        ),
        [],
        2,
        ["int8_static calibrates activation ranges", "is empty", "int8_dynamic"],
    ),
    (
        "data-shape",
        lambda t: recipe(data={"factory": "factories:wrong_width"}),
        [],
        2,
        ["cannot run on the eval inputs (input (2, 7) float32)", "shaped and typed as the model expects"],
    ),
    (
        "data-labels",
        lambda t: recipe(data={"factory": "factories:unlabelled_train"}, passes=[{"pass": "distill", "epochs": 1}]),
        [],
        2,
        ["carry no integer labels", "set alpha: 1.0"],
    ),
    (
        "model-unhandled-layer",
        lambda t: recipe(passes=[{"pass": "magnitude_prune", "targets": ["re:encoder.*"]}]),
        [],
        2,
        ["pattern 're:encoder.*' matches no", "layers are named like: fc1, fc2"],
    ),
    (
        "model-export",
        lambda t: recipe(model={"factory": "factories:Eigen"}, export={"enabled": True}),
        [],
        1,
        ["could not be exported to ONNX", "eigh"],
    ),
    (
        "output-not-writable",
        lambda t: recipe(),
        ["--out", "{tmp}/recipe.yaml/out"],
        2,
        ["cannot write there", "choose another --out"],
    ),
]


def run_case(tmp_path, setup, extra, capsys):
    body = setup(tmp_path)
    (tmp_path / "factories.py").write_text(FACTORIES)
    path = tmp_path / "recipe.yaml"
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra] or ["--out", str(tmp_path / "out")]
    status = cli.main(["run", str(path), *args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(("row", "setup", "extra", "status", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_row(row, setup, extra, status, fragments, tmp_path, capsys):
    code, stderr = run_case(tmp_path, setup, extra, capsys)
    assert code == status, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, f"{row}: {fragment!r} not in {stderr!r}"
    leftovers = list(tmp_path.rglob("*.tmp"))
    assert leftovers == [], f"half-written files: {leftovers}"


def test_malicious_pickle_does_not_execute(tmp_path, capsys):
    code, stderr = run_case(tmp_path, checkpoint_case(malicious), [], capsys)
    assert code == 2 and "refused" in stderr
    assert not (tmp_path / "pwned").exists()


def test_trust_flag_loads_a_pickle_that_needs_it(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save({"model": mlp().state_dict(), "epoch": 3, "optimizer": "adamw"}, path)
    body = recipe(model={"factory": "tests.tiny_models:mlp", "checkpoint": str(path)})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(body))
    assert cli.main(["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")]) == 0  # plain data
    torch.save({"model": mlp().state_dict(), "note": Note()}, path)
    assert cli.main(["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "refused" in capsys.readouterr().err
    args = ["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"), "--trust-checkpoint"]
    assert cli.main(args) == 0


class Note:
    """A harmless object that still needs full unpickling."""


def test_disk_full_is_one_clear_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    body = recipe(passes=[{"pass": "magnitude_prune", "sparsity": 0.5}])
    code, stderr = run_case(tmp_path, lambda t: body, [], capsys)
    assert code == 2 and "disk full while writing" in stderr and "rerun the same command" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.rglob("*.tmp")) == [] and list(tmp_path.rglob("*.safetensors")) == []


def test_folder_of_another_recipe_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "out"
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(recipe(name="first")))
    assert cli.main(["run", str(first), "--out", str(out)]) == 0
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(recipe(name="second", model={"factory": "tests.tiny_models:residual_cnn"})))
    assert cli.main(["run", str(second), "--out", str(out)]) == 2
    assert "holds a run of recipe 'first'" in capsys.readouterr().err
    assert (out / "stages").is_dir()  # nothing of the first run was touched
    second.write_text(yaml.safe_dump(recipe(name="second")))
    assert cli.main(["run", str(second), "--out", str(out), "--force"]) == 0
    assert "second" in (out / "recipe.yaml").read_text()
