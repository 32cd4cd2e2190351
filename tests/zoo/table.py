"""Regenerate the README's zoo table: ``python -m tests.zoo.table`` (runs every architecture once).

Prints a Markdown table: each architecture's family, status (or the stage that failed and why),
parameters kept, heads removed, the exporter that made the file, fp32 parity and the int8 scheme.
"""

import sys
import warnings

from tests.zoo.archs import ZOO
from tests.zoo.run import run


def row(result: dict) -> str:
    kept = f"{result['params_after'] / result['params_before']:.2f}" if "params_after" in result else "-"
    if result["status"] == "passed":
        status = "passed"
        parity = f"{result['max_abs_diff']:.1e}"
        int8 = f"{result['scheme']} (cos {result['int8_cosine']:.4f})"
    else:
        status = f"fails at {result['stage']}: {result['reason']}".replace("|", "/")
        parity = f"{result['max_abs_diff']:.1e}" if "max_abs_diff" in result else "-"
        int8 = "-"
    heads = result.get("heads_removed", "-")
    exporter = result.get("exporter", "-")
    return f"| {result['name']} | {result['family']} | {status} | {kept} | {heads} | {exporter} | {parity} | {int8} |"


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    results = [run(name) for name in names or ZOO]
    passed = sum(r["status"] == "passed" for r in results)
    print(f"{passed} of {len(results)} pass: prune 30% (+ head_ratio 0.25 with attention) -> ONNX -> parity; int8")
    print()
    print("| architecture | family | status | params kept | heads removed | exporter | fp32 max abs diff | int8 |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(row(result))


if __name__ == "__main__":
    main(sys.argv[1:])
