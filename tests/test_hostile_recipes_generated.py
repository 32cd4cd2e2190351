"""Generated hostile recipes (aliases, nesting, odd encodings, extreme numbers): each is refused with
exit 2 and one line, or runs; never a traceback, and bounded in memory (measured in-process).

Bounded for the suite: few derandomized examples, no deadline (the machine may be loaded); the time
bound is a generous per-example budget on CPU time, not a wall-clock speed test.
"""

import resource
import tracemalloc

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress import cli

BASE = (
    "name: gen\nmodel: {factory: tests.tiny_models:mlp}\ndata: {factory: tests.tiny_models:vector_data}\n"
    "export: {enabled: false}\n"
)

numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 1e12]),
)
fields = st.sampled_from(
    ["seed", "report.threads", "report.batch_sizes", "report.iterations", "export.opset", "export.parity.samples"]
)


def numeric_recipe(field: str, value) -> str:
    head, _, leaf = field.rpartition(".")
    value = [value] if leaf == "batch_sizes" else value
    doc = yaml.safe_load(BASE)
    node = doc
    for part in filter(None, head.split(".")):
        node = node.setdefault(part, {})
    node[leaf] = value
    return yaml.safe_dump(doc)


def alias_recipe(width: int, levels: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return BASE.replace(
        "model: {factory: tests.tiny_models:mlp}",
        "model:\n  factory: tests.tiny_models:mlp\n  kwargs:\n" + "\n".join("    " + line for line in lines),
    )


def nested_recipe(depth: int, flow: bool) -> str:
    if flow:
        return BASE + "extra: " + "[" * depth + "]" * depth + "\n"
    return BASE + "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v: 1\n"


recipes = st.one_of(
    st.builds(numeric_recipe, fields, numbers).map(str.encode),
    st.builds(alias_recipe, st.integers(2, 9), st.integers(1, 9)).map(str.encode),
    st.builds(nested_recipe, st.integers(1, 3000), st.booleans()).map(str.encode),
    st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig", "cp1252"]).map(
        lambda codec: (BASE + "# d\u00e9j\u00e0 vu\n").encode(codec)
    ),
    st.binary(max_size=200).map(lambda junk: BASE.encode() + junk),
    st.just(BASE.encode() + b"\x01"),  # a control character: PyYAML's reader refuses it on open
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=recipes)
def test_generated_recipe_is_refused_cleanly_or_runs(text, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("gen")
    (folder / "recipe.yaml").write_bytes(text)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    tracemalloc.start()
    try:
        code = cli.main(["run", str(folder / "recipe.yaml"), "--out", str(folder / "out")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    used = resource.getrusage(resource.RUSAGE_SELF)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("modelpress: error: ") and len(err) < 4000, err[:500]
    assert peak < 500 << 20, f"{peak >> 20} MB"
    # 5 s of the bound, in CPU seconds of this process (not wall-clock: the machine may be loaded),
    # doubled because torch may run two threads
    assert (used.ru_utime + used.ru_stime) - (cpu.ru_utime + cpu.ru_stime) < 10
