"""Rendering of an ``optimize`` result (:func:`sparsecnn.pipeline.optimize`): Markdown for
``summary.md`` (:func:`render_summary`) and rich tables for the terminal (:func:`print_summary`).
Plain functions of the result dict; nothing is measured here."""

from __future__ import annotations


def _fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def layer_rows(result: dict, batch) -> list[list[str]]:
    """Rows of the per-layer table for ``batch``: name, shape, sparsity, kernel, dense ms,
    chosen ms, speedup."""
    rows = []
    for r in result["layers"][str(batch)]:
        name = r["name"] + (" (cached)" if r.get("cached") else "")
        rows.append([name, "x".join(map(str, r["shape"])), f"{r['sparsity']:.1%}",
                     r["kernel"] + (" +relu" if r["relu"] else ""), _fmt(r["dense_ms"]),
                     _fmt(r["chosen_ms"]), _fmt(r["speedup"], ".2f") + "x" if r["speedup"] else "-"])
    return rows


NOT_MEASURED = ("**Accuracy was not measured**: no labels (label-free mode). The sparse model's "
                "outputs were checked against the pruned dense model's instead.")


def _accuracy_lines(acc) -> list[str]:
    if acc is None:
        return ["## Accuracy", "", NOT_MEASURED, ""]
    return ["## Accuracy (top-1)", "", "| dense | pruned | sparse-executed |", "| --- | --- | --- |",
            f"| {acc['dense_top1']:.2%} | {acc['pruned_top1']:.2%} | {acc['sparse_top1']:.2%} |", ""]


def render_summary(result: dict) -> str:
    """Markdown summary of an :func:`optimize` result."""
    acc, ver, mb = result["accuracy"], result["verify"], result["model_bytes"]
    lines = [f"# sparsecnn optimize: {result['model']}", "",
             f"- data: {result['data']}; weights: {result['weights'].get('source')} "
             f"{result['weights'].get('path', '')}",
             f"- pruning: {result['pruning']['method']} to {result['pruning']['target_sparsity']:.0%}, "
             f"{result['pruning'].get('schedule', result['pruning'].get('note', ''))}",
             f"- threads: torch {result['threads']['torch']}, numba {result['threads']['numba']}; "
             f"CPU: {result['cpu']}; format {result['format']}", "",
             *_accuracy_lines(acc),
             f"Sparse vs pruned dense on {ver['n']} images: max |err| {ver['max_abs_err']:.2e} "
             f"(tolerance {ver['tolerance']} x max(1, {ver['scale']:.3g})), "
             f"{'within' if ver['within_tolerance'] else 'OUTSIDE'} tolerance"
             + (f"; top-1 predictions agree on {ver['prediction_agreement']:.2%}."
                if ver.get("prediction_agreement") is not None else "."), "",
             "## End-to-end latency (median ms, one process, alternating blocks of 20 calls)", "",
             "| batch | dense (BN not folded) | dense, BN folded | sparse | speedup vs dense | vs folded |",
             "| --- | --- | --- | --- | --- | --- |"]
    for b, t in result["latency"].items():
        lines.append(f"| {b} | {t['dense']['median_ms']:.3f} | {t['dense_bn_folded']['median_ms']:.3f} "
                     f"| {t['sparse']['median_ms']:.3f} | {t['speedup']:.2f}x | "
                     f"{t['speedup_vs_folded']:.2f}x |")
    lines += ["", f"Model bytes: dense {mb['dense']:,} B, sparse {mb['sparse']:,} B "
              f"({mb['dense'] / max(mb['sparse'], 1):.2f}x smaller).", ""]
    if result.get("quantization"):
        lines += ["## Quantization of the pruned weights (CSR storage, fake-quantized top-1)", "",
                  "| method | top-1 | change (points) | bytes | fp32 CSR bytes | ratio |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['method']} | {r['top1']:.2%} | {r['delta_points']:+.2f} | {r['nbytes']:,} "
                  f"| {r['fp32_nbytes']:,} | {r['ratio']:.2f}x |" for r in result["quantization"]]
        lines.append("")
    for b in result["batch_sizes"]:
        lines += [f"## Per layer, batch {b} (tuner medians, ms)", "",
                  "| layer | shape | sparsity | kernel | dense ms | chosen ms | speedup |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(r) + " |" for r in layer_rows(result, b)]
        rejected = [f"{r['name']}: {x}" for r in result["layers"][str(b)] for x in r["rejected"]]
        if rejected:
            lines += ["", "Rejected kernels: " + "; ".join(rejected)]
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(lines)


def print_summary(result: dict, console=None) -> None:
    """Print the per-layer tables, accuracy, latency and size with rich."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    for b in result["batch_sizes"]:
        t = Table(title=f"{result['model']}: per layer, batch {b} (tuner medians)")
        for col in ("layer", "shape", "sparsity", "kernel", "dense ms", "chosen ms", "speedup"):
            t.add_column(col, justify="left" if col in ("layer", "kernel") else "right")
        for row in layer_rows(result, b):
            t.add_row(*row)
        console.print(t)
    acc, ver = result["accuracy"], result["verify"]
    if acc is None:
        console.print("[bold]accuracy NOT measured[/] (no labels, label-free mode); sparse vs "
                      f"pruned dense outputs: max |err| {ver['max_abs_err']:.1e} "
                      f"({'within' if ver['within_tolerance'] else 'OUTSIDE'} tolerance)")
    else:
        t = Table(title="top-1 accuracy")
        for col in ("dense", "pruned", "sparse-executed", "predictions agree", "max |err|"):
            t.add_column(col, justify="right")
        t.add_row(f"{acc['dense_top1']:.2%}", f"{acc['pruned_top1']:.2%}",
                  f"{acc['sparse_top1']:.2%}", f"{ver['prediction_agreement']:.2%}",
                  f"{ver['max_abs_err']:.1e}")
        console.print(t)
    t = Table(title="end-to-end latency (median ms)")
    for col in ("batch", "dense", "dense BN folded", "sparse", "speedup", "vs folded"):
        t.add_column(col, justify="right")
    for b, v in result["latency"].items():
        t.add_row(b, f"{v['dense']['median_ms']:.3f}", f"{v['dense_bn_folded']['median_ms']:.3f}",
                  f"{v['sparse']['median_ms']:.3f}", f"{v['speedup']:.2f}x",
                  f"{v['speedup_vs_folded']:.2f}x")
    console.print(t)
    mb = result["model_bytes"]
    console.print(f"model bytes: dense {mb['dense']:,}  sparse {mb['sparse']:,}  "
                  f"({mb['dense'] / max(mb['sparse'], 1):.2f}x smaller)")
    if result.get("quantization"):
        t = Table(title="quantized pruned weights (CSR storage; kernels still run fp32)")
        for col in ("method", "top-1", "change (points)", "bytes", "vs fp32 CSR"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for r in result["quantization"]:
            t.add_row(r["method"], f"{r['top1']:.2%}", f"{r['delta_points']:+.2f}",
                      f"{r['nbytes']:,}", f"{r['ratio']:.2f}x smaller")
        console.print(t)
    console.print(f"results: {result['results_dir']}")

