"""devices.py and --device: the resolver, batches moved, the autocast choice, and every model path
run on an explicit device "cpu". The GPU branches are exercised with a pretend CUDA (the availability
checks patched) where that needs no GPU kernel."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bertkit import devices, distributed
from bertkit.cli import main
from bertkit.distributed import World
from bertkit.errors import InputError
from bertkit.settings import DeviceChoice, check_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(devices, "_cuda_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def pretend_cuda(monkeypatch):
    """A machine that says it has 2 CUDA devices (no kernel may run on them)."""
    monkeypatch.setattr(devices, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# ---- spelling (torch-free) and the resolver ----------------------------------------------------------


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_good_spellings(spec):
    assert check_device(spec) == spec and DeviceChoice(spec).device == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "", " cpu", None, 0, "cuda:١"])
def test_bad_spellings_are_refused_in_one_line(spec):
    with pytest.raises(InputError, match=r"^--device must be auto, cpu, cuda, cuda:N \(N a GPU's number\) or mps; got"):
        check_device(spec)


def test_a_bad_device_is_refused_before_torch_is_imported():
    code = ("import sys\nfrom bertkit.cli import main\n"
            "rc = main(['embed', '--device', 'gpu'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "bertkit: error: --device must be auto, cpu, cuda, cuda:N (N a GPU's number) or mps; got 'gpu'"]


def test_auto_is_the_cpu_here(no_gpu):
    assert devices.resolve_device("auto") == devices.resolve_device(None) == torch.device("cpu")
    assert devices.resolve_device("cpu") == devices.resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch, no_gpu):
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(devices, "_cuda_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")


def test_a_missing_device_is_refused_in_one_line(no_gpu):
    with pytest.raises(InputError, match=r"^--device cuda: CUDA is not available on this machine$"):
        devices.resolve_device("cuda")
    with pytest.raises(InputError, match=r"^--device cuda:1: CUDA is not available on this machine$"):
        devices.resolve_device("cuda:1")
    with pytest.raises(InputError, match=r"^--device mps: MPS \(Apple's GPU\) is not available on this machine$"):
        devices.resolve_device("mps")


def test_a_cuda_number_past_the_last_gpu_is_refused(pretend_cuda):
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InputError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), 0..1"):
        devices.resolve_device("cuda:2")


def test_the_cli_refuses_cuda_here_with_one_line(no_gpu, capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    assert main(["embed", "-i", str(texts), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "bertkit: error: --device cuda: CUDA is not available on this machine"


def test_training_devices(pretend_cuda):
    assert distributed.device_for(World(), "cpu") == torch.device("cpu")
    # under torchrun, cuda is the local rank's GPU whether asked for or chosen by auto
    assert distributed.device_for(World(1, 2, 1), "cuda") == torch.device("cuda", 1)
    assert distributed.device_for(World(1, 2, 1), "auto") == torch.device("cuda", 1)
    assert distributed.device_for(World(), "cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("device, backend", [("auto", "nccl"), ("cuda", "nccl"), ("cpu", "gloo")])
def test_torchrun_joins_nccl_only_when_training_on_gpus(pretend_cuda, monkeypatch, device, backend):
    joined, chosen = [], []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", joined.append)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.init(device) == World(1, 2, 1)
    assert joined == [backend] and chosen == ([1] if backend == "nccl" else [])


# ---- batches, precision, the optimiser ---------------------------------------------------------------


def test_batches_move_to_the_device():
    batch = {"input_ids": torch.arange(6).view(2, 3), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    same = devices.to_device(batch, torch.device("cpu"))
    assert all(same[k] is batch[k] for k in batch)  # no copy on the CPU
    meta = devices.to_device(batch, torch.device("meta"))
    assert {v.device.type for v in meta.values()} == {"meta"} and meta["input_ids"].shape == (2, 3)


def test_cuda_batches_go_through_pinned_memory(monkeypatch):
    """The CUDA branch: each tensor pinned, then copied non_blocking (recorded, not run)."""
    calls = []

    class Fake:
        device = torch.device("cpu")

        def is_pinned(self):
            return False

        def pin_memory(self):
            calls.append("pin")
            return self

        def to(self, device, non_blocking=False):
            calls.append((str(device), non_blocking))
            return self

    devices.to_device({"input_ids": Fake()}, torch.device("cuda", 0))
    assert calls == ["pin", ("cuda:0", True)]


def test_inference_precision_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert not devices.inference_bf16(cpu)  # fp32 on the CPU unless asked, even with AMX
    assert devices.inference_bf16(cpu, True)
    monkeypatch.setattr(devices, "bf16_supported", lambda d: d.type == "cuda")
    assert devices.inference_bf16(torch.device("cuda")) and not devices.inference_bf16(torch.device("cuda"), False)
    assert not devices.inference_bf16(torch.device("mps"))
    with devices.inference_autocast(cpu, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with devices.inference_autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")


def test_fused_adamw_when_every_parameter_is_on_cuda_or_the_cpu():
    from bertkit.optim import fused_option

    on = SimpleNamespace(device=torch.device("cuda", 0))
    cpu = torch.nn.Parameter(torch.zeros(1))
    mps = SimpleNamespace(device=torch.device("mps"))
    assert fused_option([{"params": [on, on]}, {"params": [on]}]) == {"fused": True}
    assert fused_option([{"params": [cpu]}]) == {"fused": True}  # fused on the CPU too: 4.6x the step
    assert fused_option([{"params": [on]}, {"params": [mps]}]) == {}
    assert fused_option([]) == {}


def test_step_sums_stay_tensors_and_read_back_as_the_floats_of_before():
    from bertkit.train import _add, _floats

    values = [torch.tensor(1.1), torch.tensor(2.2e-3), torch.tensor(7, dtype=torch.long), torch.tensor(3.3)]
    as_floats: dict = {}
    as_tensors: dict = {"n": 4.0}
    for v in values:
        as_floats["x"] = as_floats.get("x", 0.0) + float(v)  # what the loop did before: float() per batch
        _add(as_tensors, {"x": v})
    assert isinstance(as_tensors["x"], torch.Tensor) and as_tensors["x"].dtype == torch.float64
    assert _floats(as_tensors) == {"n": 4.0, "x": as_floats["x"]}  # bit for bit
    assert _floats({"n": 1.0}) == {"n": 1.0}


# ---- every model path on an explicit device ----------------------------------------------------------


def test_embedder_on_cpu(tiny_model_dir):
    import bertkit
    from bertkit.embedding import Embedder

    texts = ["a short one", "a somewhat longer text than that", "x"]
    default = Embedder.from_pretrained(tiny_model_dir)
    on_cpu = Embedder.from_pretrained(tiny_model_dir, device="cpu")
    assert on_cpu.device == torch.device("cpu")
    got = on_cpu(texts)
    assert got.dtype == np.float32 and np.array_equal(got, default(texts))
    assert np.array_equal(bertkit.embed(texts, tiny_model_dir, device="cpu"), got)
    shared = Embedder(on_cpu.model, on_cpu.tokenizer)  # device None: where the model is
    assert shared.device == torch.device("cpu")


def test_embedder_under_bf16_autocast_gives_float32_close_to_fp32(tiny_model_dir, monkeypatch):
    """The GPU's precision path, run on the CPU: outputs stay float32 and near the fp32 ones."""
    from bertkit.embedding import Embedder

    embedder = Embedder.from_pretrained(tiny_model_dir, device="cpu")
    texts = ["one text", "and another, a little longer"]
    fp32 = embedder(texts)
    monkeypatch.setattr(devices, "inference_bf16", lambda device, bf16=None: True)
    bf16 = embedder(texts)
    assert bf16.dtype == np.float32
    assert (fp32 * bf16).sum(-1).min() > 0.99  # unit vectors: cosines


def test_fill_mask_on_cpu(tmp_path, minilm_dir):
    from bertkit import BertForMaskedLM, Tokenizer
    from bertkit.fill_mask import FillMask
    from tests.conftest import tiny_config

    tok = Tokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config(vocab_size=len(tok))).save_pretrained(tmp_path, tokenizer=tok)
    fill = FillMask.from_pretrained(tmp_path, device="cpu")
    assert fill.device == torch.device("cpu")
    assert fill("paris is [MASK] .", top_k=2) == FillMask.from_pretrained(tmp_path)("paris is [MASK] .", top_k=2)


def test_predict_on_cpu(tmp_path, tiny_model_dir, capsys):
    from bertkit.predict import load_finetuned
    from tests.serve.conftest import save_finetuned

    model = save_finetuned(tmp_path / "clf", tiny_model_dir, "classify")
    assert next(load_finetuned(model, device="cpu").model.parameters()).device == torch.device("cpu")
    data = tmp_path / "dev.csv"
    data.write_text("text,label\ngood,pos\nbad,neg\n")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json", "--device", "cpu"]) == 0
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(model), "-i", str(data), "-o", str(out), "--device", "cpu"]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_serve_takes_a_device(tiny_model_dir):
    from bertkit.serve.service import Service
    from bertkit.serve.settings import ServeArgs

    with pytest.raises(InputError, match="^--device must be"):
        ServeArgs(device="gpu")
    service = Service(ServeArgs(model=str(tiny_model_dir), device="cpu"))
    try:
        assert service.embedder.device == torch.device("cpu")
    finally:
        service.close()


def test_training_takes_bf16_on_a_cpu_with_amx_only(monkeypatch, tmp_path):
    """AVX512-BF16 without AMX trained slower in bf16 (0.77-0.83x fp32, measured): auto stays fp32."""
    cpu = torch.device("cpu")
    for flags, expected in (("fpu avx512f avx512_bf16 avx512_vnni", False), ("fpu avx512_bf16 amx_bf16 amx_tile", True),
                            ("fpu sse2", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"flags\t\t: {flags}\n")
        monkeypatch.setattr(devices, "Path", lambda _p, info=info: info)
        assert devices.bf16_supported(cpu) is expected, flags
