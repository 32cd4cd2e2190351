"""A run folder from someone else (issue 29): every file of it a link to a user's file, a FIFO or a
bomb in turn, under ``report``, ``run --out`` and ``compress.load``. None writes outside the folder
(the victim's bytes stay), none blocks (a hang guard, not a speed bound), none exits 3, no code runs.

One small real run is made per module and copied per case; the CLI runs in-process.
"""

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import tracemalloc
import zipfile

import numpy as np
import onnx
import pytest
import torch
import yaml

import compress
from compress.cli import main
from compress.core.errors import InputError
from tests.tiny_models import mlp

VICTIM = "my notes\n" * 10
RECIPE = {
    "name": "hostile",
    "model": {"factory": "tests.tiny_models:mlp", "checkpoint": "weights.pt"},
    "data": {"factory": "tests.tiny_models:vector_data"},
    "passes": [{"pass": "magnitude_prune", "sparsity": 0.5}],
    "export": {"baseline": True, "exporter": "torchscript"},  # TorchScript: a fraction of dynamo's time
    "report": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "max_seconds": 0.5},
}
STAGE = "stages/01-magnitude_prune"
# The files each command reads before it writes anything: each is refused there in one line.
REPORT_READS = [
    "run.json",
    "recipe.yaml",
    "manifest.json",
    "run.log",
    ".modelpress.lock",
    "stages/00-baseline/stage.json",
    f"{STAGE}/stage.json",
    "artifacts/compressed.json",
    "artifacts/compressed.onnx",
    "artifacts/heldout.npz",
    "artifacts/compressed.reference.npz",
    "report.json",  # the run's warnings, kept in the new report
]
RUN_READS = ["run.json", "run.log", ".modelpress.lock", "stages/00-baseline/stage.json", f"{STAGE}/stage.json"]
RUN_READS += [f"{STAGE}/model.safetensors"]
# The files a command only replaces (written to a temporary name, renamed over): planted all at once.
REPORT_WRITES = ["report.md", "report.html", "plots/layers.png", f"{STAGE}/model.safetensors"]
RUN_WRITES = [*REPORT_WRITES[:-1], "report.json", "recipe.yaml", "manifest.json", "artifacts/compressed.json"]
RUN_WRITES += ["artifacts/baseline.onnx", "artifacts/heldout.npz", "artifacts/compressed.reference.npz"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    torch.save(mlp().state_dict(), root / "weights.pt")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    compress.run_recipe(root / "recipe.yaml", root / "run")
    return root


@pytest.fixture
def case(made, tmp_path):
    """A copy of the run (as carried from elsewhere), the user's file outside it, the user's recipe."""
    victim = tmp_path / "notes.txt"
    victim.write_text(VICTIM)
    return shutil.copytree(made / "run", tmp_path / "run"), victim, made / "recipe.yaml"


def plant(run, relative: str, kind: str, victim) -> None:
    path = run / relative
    path.unlink(missing_ok=True)
    {"link": lambda: path.symlink_to(victim), "fifo": lambda: os.mkfifo(path)}[kind]()


def bomb(path) -> None:
    """A record of 100 MB of nothing (a sparse file): past every bound, yet no disk used."""
    path.unlink(missing_ok=True)
    path.touch()
    os.truncate(path, 100 << 20)


@contextlib.contextmanager
def hang_guard(seconds: int = 60):
    """A blocked open (a FIFO) or read ends the test instead of hanging the suite."""

    def expired(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(args, capfd) -> tuple[int, str]:
    with hang_guard():
        code = main(args)
    return code, capfd.readouterr().err


def refused(code: int, err: str, *fragments: str) -> None:
    """Exit 2 and one line holding one of ``fragments``."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("modelpress:")]
    assert len(lines) == 1 and any(fragment in lines[0] for fragment in fragments), err


# A link is refused where it is opened, or earlier where a path through it leaves the folder.
REFUSALS = {"link": ("symbolic link", "leaves the folder"), "fifo": ("FIFO",)}


def load(run):
    with hang_guard():
        try:
            return compress.load(run, trust_code=True)  # the caller trusts the code; the files stay hostile
        except InputError as exc:
            return exc


@pytest.mark.parametrize("kind", ["link", "fifo"])
@pytest.mark.parametrize("relative", REPORT_READS)
def test_a_file_report_reads_is_refused_in_one_line(case, relative, kind, capfd):
    run, victim, _ = case
    plant(run, relative, kind, victim)
    refused(*cli(["report", str(run)], capfd), *REFUSALS[kind])
    assert isinstance(load(run), (InputError, torch.nn.Module))  # refused, or the file is not one it reads
    assert victim.read_text() == VICTIM


@pytest.mark.parametrize("kind", ["link", "fifo"])
@pytest.mark.parametrize("relative", RUN_READS)
def test_a_file_run_out_reads_is_refused_in_one_line(case, relative, kind, capfd):
    run, victim, recipe = case
    plant(run, relative, kind, victim)
    refused(*cli(["run", str(recipe), "--out", str(run)], capfd), *REFUSALS[kind])
    # compress.load reads all but the log and the lock: it refuses too, never follows the link out
    assert isinstance(load(run), InputError) or relative in ("run.log", ".modelpress.lock")
    assert victim.read_text() == VICTIM


@pytest.fixture
def no_warmup(monkeypatch):
    """The timing's warm-up turns (a tenth of a second per artifact and round) are not under test here."""
    monkeypatch.setattr("export.measure.benchmark.warm", lambda call, seconds=0.0: call())


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_files_a_command_only_replaces_are_replaced_never_written_through(case, kind, capfd, made, no_warmup):
    run, victim, recipe = case
    for relative in REPORT_WRITES:
        plant(run, relative, kind, victim)
    code, err = cli(["report", str(run)], capfd)
    assert code == 0, err
    weights = run / STAGE / "model.safetensors"  # report never reads it (no --trust-run); a run does
    weights.unlink()
    shutil.copy(made / "run" / STAGE / "model.safetensors", weights)
    for relative in RUN_WRITES:
        plant(run, relative, kind, victim)
    code, err = cli(["run", str(recipe), "--out", str(run)], capfd)
    assert code == 0, err
    assert victim.read_text() == VICTIM
    assert not [p for p in run.rglob("*") if p.is_symlink() or p.is_fifo()]
    assert isinstance(load(run), torch.nn.Module)


def test_a_stage_folder_that_is_a_link_is_refused_and_survives(case, capfd, tmp_path):
    run, victim, recipe = case
    users = tmp_path / "users-folder"
    shutil.copytree(run / STAGE, users)
    shutil.rmtree(run / STAGE)
    (run / STAGE).symlink_to(users, target_is_directory=True)
    for args in (["report", str(run)], ["run", str(recipe), "--out", str(run)]):
        refused(*cli(args, capfd), "stage folder is a symbolic link")
    assert isinstance(load(run), InputError)
    assert sorted(p.name for p in users.iterdir()) == ["model.safetensors", "stage.json"]


def rewrite_record(run, artifact: str, **changes) -> None:
    path = run / "artifacts" / f"{artifact}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("name", ["baseline\ntouch PWNED #", "\x1b[31mFAKE: all passed", "x" * 200])
def test_an_artifact_name_that_is_no_plain_name_is_refused_and_escaped(case, name, capfd):
    run, _, _ = case
    rewrite_record(run, "compressed", name=name)
    code, err = cli(["report", str(run)], capfd)
    refused(code, err, "artifact name")
    assert "\x1b" not in err and "touch PWNED" not in (run / "run.log").read_text()


def test_the_folders_trust_checkpoint_grants_nothing(case, tmp_path):
    """A pickle whose payload writes a marker, with trust_checkpoint: true in the folder's own recipe."""
    run, _, _ = case
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": Payload()}, tmp_path / "evil.pt")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"].update(checkpoint=str(tmp_path / "evil.pt"), trust_checkpoint=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(InputError, match="refused: loading it needs arbitrary unpickling"):
        compress.load(run, trust_code=True)
    assert not marker.exists()


def test_a_factory_the_folder_names_is_not_called_without_the_callers_consent(case, tmp_path):
    run, _, _ = case
    marker = tmp_path / "PWNED"
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"] = {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(InputError, match="names the model factory 'os:system'.*trust_code=True"):
        compress.load(run)
    assert not marker.exists()


def vouch(run, relative: str) -> None:
    """manifest.json listing the edited file's new sha256: the folder's author writes the manifest too."""
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["artifacts"][relative] = hashlib.sha256((run / relative).read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(manifest))


def test_a_later_stored_batch_of_another_shape_is_one_line(case, capfd):
    run, _, _ = case
    path = run / "artifacts/heldout.npz"
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["b1__g0__input"] = np.zeros((4, 7), np.float32)  # the model takes 12 features
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    vouch(run, "artifacts/heldout.npz")
    refused(*cli(["report", str(run)], capfd), "its inputs do not fit artifact")


def write_npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, body in members.items():
            archive.writestr(name, body)


def npy_header(shape, dtype="<f4") -> bytes:
    import io

    handle = io.BytesIO()
    np.lib.format.write_array_header_1_0(handle, {"descr": dtype, "fortran_order": False, "shape": shape})
    return handle.getvalue()


def deflate_bomb(path, size: int) -> None:
    """A member of ``size`` zero bytes, deflated to a few hundred kilobytes, written in chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("b0__g0__input.npy", "w") as member:
        member.write(npy_header((size // 4,)))
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            member.write(chunk)


BOMBS = {
    "declares-1e12-floats": lambda p: write_npz(p, {"b0__g0__input.npy": npy_header((10**12,)) + bytes(16)}),
    "inflates-128MB": lambda p: deflate_bomb(p, 128 << 20),
    "object-array": lambda p: write_npz(p, {"b0__g0__input.npy": npy_header((1,), "|O") + pickle.dumps([1])}),
}


def report_peak(run, capfd) -> tuple[int, str, int]:
    """``modelpress report run``: exit status, stderr, and the peak of Python's allocations meanwhile."""
    tracemalloc.start()
    try:
        code, err = cli(["report", str(run)], capfd)
        return code, err, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("bomb", BOMBS)
@pytest.mark.parametrize("relative", ["artifacts/heldout.npz", "artifacts/compressed.reference.npz"])
def test_an_npz_bomb_is_refused_from_its_headers_in_bounded_memory(case, bomb, relative, capfd):
    run, _, _ = case
    BOMBS[bomb](run / relative)
    vouch(run, relative)
    code, err, peak = report_peak(run, capfd)
    refused(code, err, "not a readable .npz")
    assert peak < 200 << 20, f"{peak >> 20} MB"


RECORDS = ["run.json", "manifest.json", f"{STAGE}/stage.json", "artifacts/compressed.json", "report.json"]


@pytest.mark.parametrize("relative", RECORDS)
def test_a_record_over_the_bound_is_refused_unread(case, capfd, relative):
    run, _, _ = case
    bomb(run / relative)
    import export.runfolder.artifacts  # noqa: F401  (imported by report on the way: not counted below)
    import export.runfolder.integrity  # noqa: F401

    code, err, peak = report_peak(run, capfd)
    refused(code, err, "over the 67108864-byte bound")
    assert peak < 32 << 20, f"{peak >> 20} MB"  # its 64 MB were never read


def hostile_onnx(run, change) -> None:
    """The compressed artifact edited by ``change``, with manifest.json vouching for the new bytes."""
    path = run / "artifacts/compressed.onnx"
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))
    vouch(run, "artifacts/compressed.onnx")


def external_outside(model) -> None:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../notes.txt")


def custom_domain(model) -> None:
    model.graph.node[0].domain = "evil.ops"
    model.opset_import.add(domain="evil.ops", version=1)


def huge_initializer(model) -> None:
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([1 << 20, 1 << 20, 1 << 20])  # 4 TB of floats, a few bytes of data


def constant_of_shape(model) -> None:
    shape = onnx.helper.make_tensor("huge_shape", onnx.TensorProto.INT64, [2], [200_000, 200_000])
    model.graph.initializer.append(shape)
    model.graph.node.append(onnx.helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], name="bomb"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("huge", onnx.TensorProto.FLOAT, None))


def ort_refuses(model) -> None:
    model.graph.node[0].op_type = "NoSuchOp"


ONNX_CASES = {
    "external-data-outside": (external_outside, "leaves the folder"),
    "custom-op-domain": (custom_domain, "evil.ops::"),
    "initializer-declares-4TB": (huge_initializer, "declares"),
    "constant-of-shape-160GB": (constant_of_shape, "ConstantOfShape 'bomb'"),
    "ort-refuses": (ort_refuses, "ONNX Runtime refused it"),
}


@pytest.fixture
def quick_report(no_warmup, monkeypatch):
    """The plots are not under test here either: the report skips them."""
    monkeypatch.setattr("export.report.build.write_plots", lambda out_dir, report: {})


@pytest.mark.parametrize("row", ONNX_CASES)
def test_a_hostile_onnx_file_fails_its_artifact_with_the_reason(case, row, capfd, quick_report):
    run, victim, _ = case
    change, reason = ONNX_CASES[row]
    hostile_onnx(run, change)
    code, err = cli(["report", str(run)], capfd)
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err
    failed = [line for line in err.splitlines() if line.startswith("modelpress: artifact failed: compressed")]
    assert len(failed) == 1 and reason in failed[0], err
    assert victim.read_text() == VICTIM
