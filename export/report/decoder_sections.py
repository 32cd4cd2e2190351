"""The report's sections for decoders: agreement with the fp32 reference, the generation benchmark, and
the accuracy levels of int4 artifacts (each level measured for agreement and decode speed, the one
chosen and why). Empty for other models."""


def language(report: dict) -> list:
    """Perplexity and teacher-forced top-1 agreement of each decoder artifact with the fp32 reference."""
    keys = {"reference", "split", "rows", "tokens", "perplexity", "top1_agreement"}
    scored = [a for a in report["artifacts"] if isinstance(a.get("language"), dict) and keys <= a["language"].keys()]
    if not scored:
        return []
    first = scored[0]["language"]
    method = (f"ONNX Runtime, teacher-forced on the first {first['rows']} rows of the {first['split']} split "
              f"({first['tokens']} predicted tokens): each artifact's next-token choice against "
              f"`{first['reference']}`'s at every position, whatever the artifact's own torch source.")  # fmt: skip
    rows = [[a["name"], f"{a['language']['perplexity']:.4f}", f"{a['language']['top1_agreement']:.4f}"]
            for a in scored]  # fmt: skip
    return [("h2", f"Agreement with {first['reference']}"), ("p", method),
            ("table", ["artifact", "perplexity", "teacher-forced top-1"], rows)]  # fmt: skip


def generation(report: dict) -> list:
    """Time to first token, decode speed, greedy agreement and memory of each generation folder."""
    rows = []
    for artifact in report["artifacts"]:
        for f in artifact.get("generation", []):
            rows.append([
                artifact["name"] + (" ⚠ unreliable" if f["unreliable"] else ""), str(f["batch_size"]),
                f"{f['ttft_ms']:.1f} ({f['ttft_p10_ms']:.1f}-{f['ttft_p90_ms']:.1f})", f"{f['ttft_ratio']:.2f}×",
                f"{f['decode_tokens_per_s']:.1f} "
                f"({f['decode_p10_tokens_per_s']:.1f}-{f['decode_p90_tokens_per_s']:.1f})",
                f"{f['decode_ratio']:.2f}×", f"{f['greedy_agreement']:.3f}", f"{f['peak_rss_mb']:.0f}",
            ])  # fmt: skip
    if not rows:
        return []
    first = next(f for a in report["artifacts"] for f in a.get("generation", []))
    method = (f"onnxruntime-genai, greedy: a {first['prompt_tokens']}-token prompt of random ids, then "
              f"{first['new_tokens']} tokens; {first['rounds']} rounds, the rows taking turns, {first['threads']} "
              f"threads; ratios against `{first['baseline']}` in the same rounds; greedy agreement with it on "
              "those prompts; peak RSS of each row's own process")  # fmt: skip
    head = ["artifact", "batch", "TTFT ms (p10-p90)", "TTFT ratio", "decode tok/s (p10-p90)", "decode ratio",
            "greedy agreement", "peak RSS MiB"]  # fmt: skip
    return [("h2", "Generation"), ("p", method), ("table", head, rows)]


def accuracy_levels(report: dict) -> list:
    """Per int4 decoder artifact: every MatMulNBits ``accuracy_level`` measured on the budget split
    (teacher-forced top-1 and a batch-1 decode step in ONNX Runtime), then the choice and its reason."""
    blocks = []
    for artifact in report["artifacts"]:
        levels = artifact.get("accuracy_levels") or {}
        survey = levels.get("survey") or []
        if not levels:
            continue
        blocks.append(("h3", f"{artifact['name']}: accuracy_level"))
        if survey:
            first = survey[0]
            blocks.append(("p", f"Every level on every packed MatMul in turn: teacher-forced top-1 against fp32 on "
                                f"the {levels.get('split', 'budget')} split; one batch-1 decode step after a "
                                f"{first['past_tokens']}-token prompt in ONNX Runtime, the levels taking turns over "
                                f"{first['rounds']} rounds (median)."))  # fmt: skip
            rows = [[str(row["level"]), f"{row['top1']:.4f}", f"{row['decode_step_ms']:.2f}",
                     f"{row['speed_vs_level_1']:.2f}×"] for row in survey]  # fmt: skip
            blocks.append(("table", ["level", "top-1", "decode step ms", "speed vs level 1"], rows))
        blocks.append(("p", f"Chosen: {levels['reason']}."))
    return [("h2", "Accuracy levels (int4 decoders)"), *blocks] if blocks else []
