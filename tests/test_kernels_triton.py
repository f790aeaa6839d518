"""The Triton GPU backend (issue 10) beyond the registry-driven grids of test_kernels_conv.py and
test_kernels_linear.py (which run every Triton kernel on its test device: CUDA with a GPU, else
the CPU through Triton's interpreter, ``TRITON_INTERPRET=1`` set by conftest.py).

Here: capabilities and dispatch (emulated kernels are never candidates), fp16 / bf16 inputs,
every autotuning configuration the GPU may pick (run in the interpreter too), the prepared
operand and module following the device, the GPU benchmark's pipeline (on CPU tensors), and
GPU-only checks (compiled kernels with autotuning, module ``.to("cuda")``, 2:4 baseline, CUDA
timing), which skip without a GPU, with the reason.

Tolerances for fp16 / bf16: the kernels keep fp32 weight values and accumulate in fp32, so the
output is the fp32 convolution of the same (rounded) input and bias, rounded once to the
output dtype: ``rtol`` one unit in the last place of that dtype (2**-10 for fp16, 2**-7 for
bf16), ``atol`` 1e-6 x fan-in (fp32 summation order, as the fp32 grids).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparsecnn
from sparsecnn import dispatch
from sparsecnn.functional import conv2d_problem, linear_problem
from sparsecnn.kernels import prepared, registry
from sparsecnn.kernels.triton import _runtime

from _kernel_cases import sparse_weight

pytestmark = pytest.mark.skipif(not _runtime.installed(),
                                reason="triton is not installed (pip install 'sparsecnn[gpu]')")

HAS_CUDA = torch.cuda.is_available()
RUNNABLE = _runtime.installed() and _runtime.runnable_here()
DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_runnable = pytest.mark.skipif(
    not RUNNABLE, reason="no CUDA GPU and TRITON_INTERPRET is not set: no Triton kernel can run")
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
CONV = ("triton_direct", "triton_direct_unified", "triton_spmm")
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _fmt(name):
    return "unified_csr" if name == "triton_direct_unified" else "csr"


def _conv_case(name, dtype=torch.float32, *, n=3, c=8, h=9, w=11, k=12, r=3, stride=1,
               padding=1, dilation=1, groups=1, sparsity=0.8, bias=True, relu=False, seed=0):
    """Run conv2d kernel ``name`` on DEVICE and return (y, fp32 reference on the CPU, fan-in)."""
    if name == "triton_spmm":
        r, padding, dilation = 1, 0, 1
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    weight = sparse_weight((k, c // groups, r, r), sparsity, gen)
    b = torch.randn(k, generator=gen).to(dtype) if bias else None
    ws = sparsecnn.to_sparse(weight, _fmt(name))
    y = sparsecnn.conv2d(x.to(DEVICE), ws, None if b is None else b.to(DEVICE), stride, padding,
                         dilation, groups, algo=name, relu=relu)
    ref = F.conv2d(x.float(), ws.to_dense(), None if b is None else b.float(), stride, padding,
                   dilation, groups)
    return y, (F.relu(ref) if relu else ref), c // groups * r * r


# --- capabilities and dispatch ---------------------------------------------------------------
def test_registered_with_their_capabilities():
    for name in CONV:
        k = registry.get("conv2d", name)
        assert "cuda" in k.devices and {"float32", "float16", "bfloat16"} <= set(k.dtypes)
        assert k.is_emulated("cpu") == _runtime.interpreting() == ("cpu" in k.devices)
        assert not k.is_emulated("cuda")
    lin = registry.get("linear", "triton_spmm")
    assert "cuda" in lin.devices and lin.is_emulated("cpu") == _runtime.interpreting()
    assert registry.get("conv2d", "triton_direct_unified").accepts("unified_csr")
    assert not registry.get("conv2d", "triton_direct_unified").accepts("csr")
    assert registry.get("conv2d", "triton_direct").accepts("unified_csr")  # csr family


def test_spmm_conv_supports_1x1_only():
    k = registry.get("conv2d", "triton_spmm")
    w = sparsecnn.to_sparse(sparse_weight((4, 6, 3, 3), 0.5, torch.Generator().manual_seed(0)))
    _, p3, _, _ = conv2d_problem(torch.randn(1, 6, 5, 5), w, padding=1)
    assert "does not support" in k.why_not(p3)


@pytest.mark.skipif(not _runtime.interpreting(), reason="TRITON_INTERPRET is not set")
def test_emulated_kernels_are_never_dispatch_candidates():
    gen = torch.Generator().manual_seed(1)
    w = sparsecnn.to_sparse(sparse_weight((16, 8, 3, 3), 0.95, gen), "unified_csr")
    x = torch.randn(2, 8, 9, 9, generator=gen)
    _, problem, _, _ = conv2d_problem(x, w, padding=1)
    names = {k.name for k in registry.candidates(problem)}
    assert not names & set(CONV)
    assert dispatch.heuristic(problem) not in CONV
    assert registry.resolve(problem, "triton_direct_unified").name == "triton_direct_unified"
    assert {m.name for m in dispatch.candidate_kernels(problem)}.isdisjoint(CONV)
    wl = sparsecnn.to_sparse(sparse_weight((8, 16), 0.9, gen))
    _, lp, _, _ = linear_problem(torch.randn(4, 16), wl)
    assert "triton_spmm" not in {k.name for k in registry.candidates(lp)}


def test_without_a_device_triton_is_not_imported_and_kernels_say_why(tmp_path):
    """A CPU-only process without the interpreter: the kernels are registered (listed) but
    unavailable, asking for one names the missing device, and Triton is never imported."""
    code = (
        "import sys, torch, sparsecnn\n"
        "from sparsecnn.kernels import registry\n"
        "k = registry.get('conv2d', 'triton_direct')\n"
        "assert k.devices == ('cuda',), k.devices\n"
        "assert 'triton' not in sys.modules, 'triton imported at sparsecnn import'\n"
        "w = sparsecnn.to_sparse(torch.randn(4, 3, 3, 3))\n"
        "try:\n"
        "    sparsecnn.conv2d(torch.randn(1, 3, 5, 5), w, algo='triton_direct')\n"
        "except ValueError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(sparsecnn.__file__).parents[1])
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "needs a device in ('cuda',)" in out.stdout


# --- low precision ---------------------------------------------------------------------------
@needs_runnable
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", CONV)
@pytest.mark.parametrize("geom", [dict(), dict(stride=2, padding=0, groups=2, relu=True, n=2)],
                         ids=["3x3-p1", "s2-g2-relu"])
def test_conv_low_precision(name, dtype, geom):
    y, ref, fan_in = _conv_case(name, dtype, **geom)
    assert y.dtype == dtype and y.device.type == DEVICE
    torch.testing.assert_close(y.cpu().float(), ref, rtol=ULP[dtype], atol=1e-6 * fan_in)


@needs_runnable
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch", [1, 37])
def test_linear_low_precision(dtype, batch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 70, generator=gen).to(dtype)
    weight = sparse_weight((45, 70), 0.9, gen)
    b = torch.randn(45, generator=gen).to(dtype)
    y = sparsecnn.linear(x.to(DEVICE), sparsecnn.to_sparse(weight), b.to(DEVICE),
                         algo="triton_spmm", relu=True)
    ref = F.relu(F.linear(x.float(), weight, b.float()))
    assert y.dtype == dtype
    torch.testing.assert_close(y.cpu().float(), ref, rtol=ULP[dtype], atol=1e-6 * 70)


# --- every tile configuration the autotuner may pick -----------------------------------------
@needs_runnable
@pytest.mark.parametrize("unified", [True, False], ids=["unified", "csr"])
def test_every_direct_autotune_config_is_correct(unified):
    """Each configuration of the direct kernel's autotuning space (sub-batch 1, 2, 4, 8 x
    channel blocks 4, 16), launched explicitly: N=3 leaves a partial sub-batch (for 2, 4, 8), a
    7x9 plane a partial pixel tile, K=6 a partial channel block (small: the interpreter's cost
    grows with the number of programs)."""
    from sparsecnn.kernels.triton import _direct_jit

    name = "triton_direct_unified" if unified else "triton_direct"
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 7, 9, generator=gen)
    w = sparsecnn.to_sparse(sparse_weight((6, 3, 3, 3), 0.7, gen), _fmt(name))
    b = torch.randn(6, generator=gen)
    ref = F.conv2d(x, w.to_dense(), b, 1, 1)
    _, problem, _, _ = conv2d_problem(x.to(DEVICE), w, b.to(DEVICE), 1, 1)
    op = prepared.prepare(registry.get("conv2d", name), w, problem).operand
    xp = F.pad(x, (1, 1, 1, 1)).to(DEVICE)
    seen = set()
    for cfg in _direct_jit.CONFIGS:
        y = torch.full(problem.out_shape, float("nan"), device=DEVICE)
        used = _direct_jit.launch(xp, op.values, op.offsets, op.rowptr, op.perm, b.to(DEVICE), y,
                                  stride=(1, 1), row_len=op.row_len, work_key=op.work_key,
                                  unified=unified, relu=False, autotune=False,
                                  config=cfg.kwargs)
        assert used == cfg.kwargs
        seen.add(cfg.kwargs["SUB_BATCH"])
        torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-6 * 27, msg=str(cfg.kwargs))
    assert seen == {1, 2, 4, 8}


@needs_runnable
def test_every_spmm_autotune_config_is_correct():
    from sparsecnn.kernels.triton import _spmm_jit

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(70, 33, generator=gen)  # (in, B): the transposed input of a linear layer
    weight = sparse_weight((21, 70), 0.8, gen)
    w = sparsecnn.to_sparse(weight)
    _, problem, _, _ = linear_problem(torch.randn(33, 70).to(DEVICE), w)
    op = prepared.prepare(registry.get("linear", "triton_spmm"), w, problem).operand
    ref = (weight @ x).t()
    for cfg in _spmm_jit.CONFIGS:
        y = torch.full((33, 21), float("nan"), device=DEVICE)
        _spmm_jit.launch(x.to(DEVICE), op.values, op.cols, op.rowptr, op.perm, None, y, m=21,
                         p=33, nb=1, x_strides=(0, 33, 1), y_strides=(0, 1, 21),
                         work_key=op.work_key, relu=False, autotune=False, config=cfg.kwargs)
        torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-6 * 70, msg=str(cfg.kwargs))


def test_config_pruning_and_heuristics():
    from sparsecnn.kernels.triton import _direct_jit, _spmm_jit

    kept = _direct_jit._prune(_direct_jit.CONFIGS, {"N": 3, "OH": 5, "OW": 5})
    assert kept and all(c.kwargs["SUB_BATCH"] <= 4 and c.kwargs["BLOCK_P"] <= 64 for c in kept)
    assert _direct_jit._prune(_direct_jit.CONFIGS, {"N": 1, "OH": 1, "OW": 1})  # never empty
    full = _direct_jit._prune(_direct_jit.CONFIGS, {"N": 128, "OH": 224, "OW": 224})
    assert {c.kwargs["SUB_BATCH"] for c in full} == {1, 2, 4, 8}
    for c in _direct_jit.CONFIGS:
        kw = c.kwargs
        assert kw["BLOCK_K"] * kw["SUB_BATCH"] * kw["BLOCK_P"] == _direct_jit.TILE_ELEMS
    assert _direct_jit.heuristic(128, 3136, 64)["SUB_BATCH"] == 8
    assert _direct_jit.heuristic(3, 3136, 64)["SUB_BATCH"] == 4
    assert _direct_jit.heuristic(1, 49, 64, interpreter=True) == {"BLOCK_K": 8, "SUB_BATCH": 1,
                                                                 "BLOCK_P": 64}
    assert _spmm_jit._prune(_spmm_jit.CONFIGS, {"P": 1})
    assert _spmm_jit.heuristic(1, 100) == {"BLOCK_M": 32, "BLOCK_P": 16}
    assert (_runtime.next_pow2(1), _runtime.next_pow2(5), _runtime.next_pow2(64)) == (1, 8, 64)
    assert _runtime.work_bucket(46) != _runtime.work_bucket(92)  # 99 % vs 98 % of 4608
    assert _runtime.work_bucket(0) == 0


# --- the prepared operand and the module follow the device -----------------------------------
@pytest.mark.parametrize("name", CONV)
def test_prepared_operand_lives_on_the_problems_device(name):
    gen = torch.Generator().manual_seed(6)
    r = 1 if name == "triton_spmm" else 3
    w = sparsecnn.to_sparse(sparse_weight((8, 4, r, r), 0.6, gen), _fmt(name))
    _, problem, _, _ = conv2d_problem(torch.randn(2, 4, 6, 6), w, padding=r // 2)
    kernel = registry.get("conv2d", name)
    on_meta = prepared.prepare(kernel, w, problem.replace(device="meta"))
    on_cpu = prepared.prepare(kernel, w, problem)
    assert on_meta is not on_cpu  # the cache keys on the problem, whose device differs
    for prep, dev in ((on_meta, "meta"), (on_cpu, "cpu")):
        tensors = [t for t in prep.operand if isinstance(t, torch.Tensor)]
        assert tensors and all(t.device.type == dev for t in tensors)
    assert prepared.prepare(kernel, w, problem.replace(device="meta")) is on_meta  # cached once
    assert {p.problem.device for p in prepared.CACHE.held(w)} >= {"meta", "cpu"}


@needs_runnable
def test_module_to_moves_bias_and_replans():
    from sparsecnn.nn import SparseConv2d

    gen = torch.Generator().manual_seed(7)
    weight = sparse_weight((8, 4, 3, 3), 0.7, gen)
    mod = SparseConv2d(sparsecnn.to_sparse(weight, "unified_csr"), torch.randn(8, generator=gen),
                       padding=1, relu=True, algo="triton_direct_unified").eval()
    x = torch.randn(2, 4, 6, 6, generator=gen)
    ref = F.relu(F.conv2d(x, mod.weight.to_dense(), mod.bias, padding=1))
    with torch.no_grad():
        mod.to(DEVICE)
        torch.testing.assert_close(mod(x.to(DEVICE)).cpu(), ref, rtol=1e-5, atol=1e-5)
        assert mod._plans and mod.bias.device.type == DEVICE
        with pytest.raises(TypeError, match="float64"):
            mod.double()  # the kernel takes no float64: refused, the module unchanged
        assert mod.bias.dtype == torch.float32 and mod._plans
        mod.half()  # any _apply replaces the bias buffer: the plans holding it are dropped
        assert mod.bias.dtype == torch.float16 and not mod._plans
        y = mod(x.to(DEVICE, torch.float16))
    assert y.dtype == torch.float16 and mod.bias.dtype == torch.float16
    torch.testing.assert_close(y.cpu().float(), ref, rtol=2e-3, atol=2e-3)


# --- the GPU benchmark's pipeline, on CPU tensors --------------------------------------------
def test_gpu_bench_cli_needs_cuda(capsys, tmp_path):
    if HAS_CUDA:
        pytest.skip("a CUDA GPU is present: the command would run")
    from sparsecnn.cli.main import main

    assert main(["bench", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "torch.cuda.is_available() is False" in err
    assert not (tmp_path / "r").exists()
    assert main(["bench", "--dtype", "float16"]) == 2
    assert "--device cuda only" in capsys.readouterr().err


def test_gpu_bench_providers_and_suite():
    from sparsecnn.bench import SUITES, LAYERS, gpu

    names = gpu.resolve_providers(None, ["cusparse"])
    assert names[:2] == ["cudnn", "cusparse"] and set(CONV) <= set(names)
    with pytest.raises(ValueError, match="unknown baseline"):
        gpu.resolve_providers(None, ["mkl"])
    with pytest.raises(ValueError, match="runs on CUDA"):
        gpu.resolve_providers(["direct"])
    suite = [LAYERS[n] for n in SUITES["gpu"]]
    assert suite[0].name == "vgg16-3x224x224x64" and suite[8].name == "vgg16-512x14x14x512"
    assert {s.model for s in suite} == {"vgg16", "resnet50", "alexnet"}
    assert "vgg16-3x224x224x64" not in SUITES["vgg16"]  # the CPU suite is unchanged
    assert gpu.semi24_unavailable(LAYERS["alexnet-conv4"]) == "2:4 baseline: 1x1 layers only"


@needs_runnable
@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: the GPU-only test below runs it there")
def test_gpu_bench_pipeline_on_cpu_tensors(tmp_path):
    """The benchmark's own code (providers, checks, rows, files), run on CPU tensors with the
    interpreter standing in for the GPU: every provider's output must match cuDNN's stand-in."""
    import json

    from sparsecnn.bench import LayerSpec, gpu
    from sparsecnn.bench.gpu_output import render_gpu_tables, write_gpu_results

    t3 = LayerSpec("t3", "test", C=4, H=6, W=6, K=8, R=3, S=3, stride=1, pad=1)
    t1 = LayerSpec("t1", "test", C=8, H=6, W=6, K=8, R=1, S=1, stride=2, pad=0)
    rows, skipped = gpu.sweep_gpu([t3, t1], [0.9], [2], ["float32"], progress=False,
                                  device="cpu", min_time=0.002, max_time=0.01)
    assert not skipped
    by = {(r["layer"], r["sparsity"], r["kernel"]): r for r in rows}
    for (layer, sp, k), r in by.items():
        if k == "semi24":
            assert r["status"].startswith("unsupported")
        elif k == "triton_spmm" and layer == "t3":
            assert r["status"].startswith("unsupported") and "does not support" in r["status"]
        else:
            assert r["status"] == "ok", (layer, sp, k, r["status"])
            assert r["speedup"] > 0 and r["first_call_ms"] > 0
    assert by[("t1", 0.9, "triton_spmm")]["config"].startswith("BLOCK_M=")
    render_gpu_tables(rows, {})
    out = write_gpu_results(rows, {"machine": {}}, tmp_path / "res", skipped=[("x", 1, "f", 0.5)])
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "speedup-N2.png"]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["skipped_by_time_budget"] == [["x", 1, "f", 0.5]] and len(doc["rows"]) == len(rows)
    rows2, skipped2 = gpu.sweep_gpu([t3], [0.8, 0.9], [1], ["float32"], ["cudnn"],
                                    progress=False, device="cpu", min_time=0.002,
                                    max_time=0.01, time_budget=1e-9)
    assert len(rows2) == 1 and skipped2 == [("t3", 1, "float32", 0.9)]  # first case runs


def test_gpu_goals_and_break_even_on_given_rows():
    from sparsecnn.bench import gpu

    def row(layer, k, sp, speedup, vs_cus, n=128, dt="float16"):
        return {"layer": layer, "kernel": k, "N": n, "dtype": dt, "sparsity": sp,
                "speedup": speedup, "speedup_vs_cusparse": vs_cus, "status": "ok"}

    rows = [row("vgg16-a", "cudnn", sp, 1.0, 0.5) for sp in (0.8, 0.9, 0.99)]
    rows += [row("vgg16-a", "triton_direct", 0.8, 0.5, 2.0),
             row("vgg16-a", "triton_direct", 0.9, 0.9, 3.0),
             row("vgg16-a", "triton_direct_unified", 0.9, 1.2, 3.5),
             row("vgg16-a", "triton_direct", 0.99, 4.0, 9.0),
             row("vgg16-a", "cusparse", 0.9, 0.3, 1.0)]
    g = {x["goal"]: x for x in gpu.goals(rows)}
    assert g["vs_cudnn"]["met"] and g["vs_cudnn"]["worst"] == 1.2 and g["vs_cudnn"]["at"] == 0.9
    assert g["vs_cusparse"]["met"] and g["vs_cusparse"]["worst"] == 2.0
    be = gpu.break_even_gpu(rows)
    s, label = be[("vgg16-a", "triton_direct", "float16", 128)]
    assert 0.9 < s < 0.99 and label == f"{s:.3f}"
    assert be[("vgg16-a", "cusparse", "float16", 128)] == (None, ">0.9")
    rows.append(row("vgg16-a", "triton_direct", 0.95, 0.8, 0.7))
    g = {x["goal"]: x for x in gpu.goals(rows)}
    assert not g["vs_cudnn"]["met"] and not g["vs_cusparse"]["met"]


# --- GPU only ----------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("name", CONV)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cuda_autotuned_kernels(name, dtype, monkeypatch):
    """Compiled on the GPU with autotuning on (the configuration the benchmark runs): correct,
    and the chosen sub-batch is one of the paper's {1, 2, 4, 8}."""
    from sparsecnn.kernels.triton import _direct_jit, _spmm_jit

    monkeypatch.delenv(_runtime.AUTOTUNE_ENV, raising=False)
    assert _runtime.autotuning()
    y, ref, fan_in = _conv_case(name, dtype, n=16, c=32, h=20, w=20, k=48, sparsity=0.9)
    tol = {"rtol": 1e-5, "atol": 1e-6 * fan_in} if dtype == torch.float32 else \
        {"rtol": ULP[dtype], "atol": 1e-6 * fan_in}
    torch.testing.assert_close(y.cpu().float(), ref, **tol)
    if name == "triton_spmm":
        assert set(_spmm_jit.LAST_CONFIG) == {"BLOCK_M", "BLOCK_P"}
    else:
        assert _direct_jit.LAST_CONFIG["SUB_BATCH"] in (1, 2, 4, 8)


@needs_cuda
def test_cuda_module_to_cuda_moves_everything():
    from sparsecnn.nn import SparseConv2d

    gen = torch.Generator().manual_seed(8)
    mod = SparseConv2d(sparsecnn.to_sparse(sparse_weight((16, 8, 3, 3), 0.9, gen)),
                       torch.randn(16, generator=gen), padding=1, algo="triton_direct").eval()
    x = torch.randn(4, 8, 10, 10, generator=gen)
    want = F.conv2d(x, mod.weight.to_dense(), mod.bias, padding=1)
    mod.to("cuda")
    assert mod.bias.is_cuda
    with torch.no_grad():
        y = mod(x.cuda())
    assert y.is_cuda
    torch.testing.assert_close(y.cpu(), want, rtol=1e-5, atol=1e-4)
    held = [p for p in prepared.CACHE.held(mod.weight) if p.problem.device == "cuda"]
    assert held and all(t.is_cuda for t in held[0].operand if isinstance(t, torch.Tensor))


@needs_cuda
def test_cuda_semi24_baseline():
    from sparsecnn.bench import LAYERS, gpu

    spec = LAYERS["resnet50-1x1-256-64@56"]
    why = gpu.semi24_unavailable(spec)
    if why:
        pytest.skip(why)
    rows = gpu.time_layer_gpu(spec, 0.9, 2, "float16", ["cudnn", "semi24"], min_time=0.01,
                              max_time=0.05)
    (r,) = [r for r in rows if r["kernel"] == "semi24"]
    assert r["status"] == "ok" and r["actual_sparsity"] == 0.5


@needs_cuda
def test_cuda_timing_waits_for_the_gpu():
    from sparsecnn import timing

    cycles = 20_000_000  # ~10 ms at 2 GHz
    t = timing.measure({"sleep": lambda: torch.cuda._sleep(cycles)}, min_time=0.05,
                       max_time=0.2)["sleep"]
    assert t.ms > 2.0 and t.first_call_ms > 2.0  # launch-only timing would be microseconds
