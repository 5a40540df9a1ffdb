"""The device path, run on the CPU through the code a GPU runs: every precision and memory format of
the training step, the fp16 loss scaler, restore onto a device that is not the CPU (``meta`` stands
in for CUDA: a CPU tensor mixed into its work raises, as it would on a GPU), and which GPU a Ray
trial takes. The few calls that need CUDA itself are in the ``gpu`` tests at the end."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import SMALL, Blobs, MomentFeatures, blob_images

from orchestrator.config import RunSettings, TrialConfig
from orchestrator.data.dataset import CachedDataset, DeviceImages
from orchestrator.errors import ConfigError
from orchestrator.gan.checkpoints import load_checkpoint, restore_training_state, training_state
from orchestrator.gan.placement import Placement, place, resolve_precision, trial_device
from orchestrator.gan.step import (
    build_state,
    generate,
    queue_step,
    train_step,
    train_steps,
)
from orchestrator.metrics.frechet import FeatureStats
from orchestrator.trial import TrialRunner

CHANNELS_LAST = torch.channels_last


def _config(**overrides: object) -> TrialConfig:
    return TrialConfig.from_dict({**SMALL, **overrides})


def _formats_match(net: torch.nn.Module, channels_last: bool) -> bool:
    four_d = [p for p in net.parameters() if p.ndim == 4]
    return bool(four_d) and all(p.is_contiguous(memory_format=CHANNELS_LAST) == channels_last for p in four_d)


# --- resolving a placement


def test_cpu_without_bf16_instructions_defaults_to_fp32_with_fused_optimisers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("orchestrator.gan.placement.cpu_bf16_native", lambda: False)
    cpu = place("cpu")
    assert (cpu.precision, cpu.channels_last, cpu.fused, cpu.amp_dtype) == ("fp32", False, True, None)
    assert cpu.grad_scaler() is None
    state = build_state(_config(), 3, 32, cpu, seed=0)
    assert state.opt_d.defaults["fused"] and state.scaler_d is None


def test_cpu_with_bf16_instructions_defaults_to_bf16_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.gan.placement.cpu_bf16_native", lambda: True)
    cpu = place("cpu")
    assert (cpu.precision, cpu.channels_last, cpu.amp_dtype) == ("bf16", True, torch.bfloat16)
    assert cpu.grad_scaler() is None  # bf16 has fp32's range
    assert place("cpu", "fp32").channels_last is False  # asked for fp32: the plain layout, as before


def test_evaluation_scores_the_fp32_generator_whatever_the_trial_trains_in() -> None:
    state = build_state(_config(), 3, 32, place("cpu", "bf16", channels_last=True), seed=0)
    train_step(state, DeviceImages(blob_images(64), "cpu", channels_last=True))
    z = torch.randn(16, state.config.nz, generator=torch.Generator().manual_seed(0))
    net = state.eval_generator.eval()
    with torch.no_grad():
        fp32 = net(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = net(z).float()
    images = generate(state, z)
    assert torch.equal(images, fp32)
    assert not torch.equal(images, rounded)  # a bf16 forward would differ: the check can fail
    with torch.autocast("cpu", dtype=torch.bfloat16):  # called inside a trial's training context
        assert torch.equal(generate(state, z), fp32)


@pytest.mark.parametrize(("native", "asked", "expected"), [
    (True, "auto", "bf16"), (False, "auto", "fp16"), (True, "fp16", "fp16"), (False, "fp32", "fp32"),
])
def test_auto_on_cuda_is_bf16_only_where_native(
    monkeypatch: pytest.MonkeyPatch, native: bool, asked: str, expected: str
) -> None:
    monkeypatch.setattr("orchestrator.gan.placement.bf16_native", lambda device: native)
    assert resolve_precision(asked, torch.device("cuda")) == expected
    assert place("cuda", asked).channels_last  # cudnn's fast layout, by default on CUDA only


def test_bf16_on_a_gpu_without_it_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.gan.placement.bf16_native", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ConfigError, match=r"bf16: Tesla T4 has no native bf16; use --precision fp16"):
        place("cuda", "bf16")


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'bf61' is not one of auto, bf16, fp16, fp32 \(did you mean"):
        RunSettings(precision="bf61")
    with pytest.raises(ConfigError, match="--precision 'fp8'"):
        place("cpu", "fp8")


@pytest.mark.parametrize(("gpu_ids", "visible", "expected"), [
    (["2"], "2", "cuda:0"),  # Ray narrowed CUDA_VISIBLE_DEVICES to the trial's GPU: the usual case
    (["2"], "0,1,2,3", "cuda:2"),  # several visible: the assigned one, by its place in the list
    (["3"], "3,1", "cuda:0"),
    ([1], "", "cuda:1"),  # nothing narrowed (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): the id itself
    ([], "0", "cuda"),  # no GPU assigned by Ray (a local run): torch's current device
])
def test_a_ray_trial_takes_the_gpu_it_was_assigned(gpu_ids: list, visible: str, expected: str) -> None:
    assert trial_device("cuda", gpu_ids, visible) == torch.device(expected)
    assert trial_device("cpu", gpu_ids, visible) == torch.device("cpu")


def test_search_records_and_checks_the_precision(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.search.cli import cli_main

    assert cli_main(["shapes", "--dry-run", "--precision", "bf16"]) == 0
    assert "on cpu in bf16" in capsys.readouterr().out
    monkeypatch.setattr("orchestrator.gan.placement.cpu_bf16_native", lambda: False)
    assert cli_main(["shapes", "--dry-run"]) == 0
    assert "on cpu in fp32 (auto)" in capsys.readouterr().out
    monkeypatch.setattr("orchestrator.gan.placement.cpu_bf16_native", lambda: True)
    assert cli_main(["shapes", "--dry-run"]) == 0
    assert "on cpu in bf16 (auto)" in capsys.readouterr().out
    assert cli_main(["shapes", "--dry-run", "--precision", "fp8"]) == 2  # one line, not argparse's usage
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --precision: invalid choice: 'fp8'" in err


# --- the training step in every precision and memory format, on the CPU


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_precision_and_format_trains(precision: str, channels_last: bool) -> None:
    placement = place("cpu", precision, channels_last)
    state = build_state(_config(ema_decay=0.9, loss="wgan-gp"), 3, 32, placement, seed=0)
    stats = train_steps(state, DeviceImages(blob_images(64), "cpu", channels_last), 4)
    assert state.step == 4 and all(math.isfinite(s.d_loss) and math.isfinite(s.g_loss) for s in stats)
    for net in (state.generator, state.discriminator, state.ema):
        assert _formats_match(net, channels_last)  # the EMA too: its update is then a plain lerp
    assert (state.scaler_g is not None) == (precision == "fp16") == (state.scaler_d is not None)
    images = generate(state, torch.randn(4, 16))
    assert images.dtype == torch.float32 and images.abs().max() <= 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_first_step_is_fp32s_within_autocast_rounding(precision: str) -> None:
    exact = build_state(_config(), 3, 32, place("cpu", "fp32"), seed=1)
    mixed = build_state(_config(), 3, 32, place("cpu", precision, channels_last=True), seed=1)
    a, b = train_step(exact, Blobs()), train_step(mixed, Blobs())
    tolerance = {"bf16": 0.03, "fp16": 0.01}[precision]  # bf16 keeps 8 mantissa bits, fp16 11
    # fp16's first updates overflow at the scaler's initial scale and are skipped, so after D's
    # first update only bf16 can match: compare what comes before it
    keys = ("d_loss", "d_real", "d_fake") + (("g_loss", "d_grad_norm") if precision == "bf16" else ())
    for key in keys:
        assert getattr(b, key) == pytest.approx(getattr(a, key), rel=tolerance), key


def test_fp16_loss_scale_settles_within_a_few_steps() -> None:
    state = build_state(_config(), 3, 32, place("cpu", "fp16", channels_last=True), seed=1)
    stats = train_steps(state, Blobs(), 12)
    assert state.scaler_d is not None and state.scaler_d.get_scale() < 2.0**16  # it backed off
    assert all(math.isfinite(s.d_grad_norm) and math.isfinite(s.g_grad_norm) for s in stats[-4:])


def test_fp16_skips_an_overflowing_step_and_lowers_the_scale() -> None:
    state = build_state(_config(), 3, 32, place("cpu", "fp16"), seed=0)
    assert state.scaler_d is not None
    state.scaler_d = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # scaled gradients overflow at once
    before = [p.detach().clone() for p in state.discriminator.parameters()]
    stats = train_step(state, Blobs())
    assert not math.isfinite(stats.d_grad_norm) and math.isfinite(stats.d_loss)
    assert all(torch.equal(p, q) for p, q in zip(before, state.discriminator.parameters(), strict=True))
    assert state.scaler_d.get_scale() == 2.0**119  # backed off by half, as torch's scaler does


# --- meta stands in for a GPU: every tensor of the step must be made on the state's device


@pytest.mark.parametrize(("loss", "optimizer"), [("bce", "adam"), ("wgan-gp", "adam"), ("wgan", "rmsprop"),
                                                 ("hinge", "sgd")])
def test_the_step_makes_every_tensor_on_the_trials_device(loss: str, optimizer: str) -> None:
    placement = Placement(torch.device("meta"), "fp32", channels_last=True)
    state = build_state(_config(loss=loss, optimizer=optimizer, ema_decay=0.9, d_dropout=0.1), 3, 32,
                        placement, seed=0)
    images = DeviceImages(blob_images(32), placement.device, channels_last=True)
    stats = queue_step(state, images)  # a CPU tensor mixed in anywhere would raise here
    assert stats.device.type == "meta" and stats.shape == (6,) and state.step == 1
    assert images.sample(8, state.rng).is_contiguous(memory_format=CHANNELS_LAST)
    exp_avgs = [s for s in state.opt_d.state.values() if "exp_avg" in s]
    assert all(s["exp_avg"].device.type == "meta" for s in exp_avgs)


@pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter")  # meta holds no values
def test_restore_onto_another_device_loads_on_the_cpu_and_places_each_tensor(tmp_path: Path) -> None:
    """The GPU crash of issue 12: a checkpoint read with ``map_location=<trial device>`` moves the
    RNG states there too, and torch accepts only CPU byte tensors for them."""
    saving = _runner(place("cpu", "fp16"))
    saving.train(3)
    saving.save(tmp_path / "state.pt")
    target = _runner(Placement(torch.device("meta"), "fp16", channels_last=True))
    target.restore(tmp_path / "state.pt")
    assert target.step == 3 and target.history == saving.history
    assert torch.equal(target.state.rng.get_state(), saving.state.rng.get_state())
    for opt in (target.state.opt_g, target.state.opt_d):
        moments = [t for s in opt.state.values() for k, t in s.items() if k != "step"]
        assert moments and all(t.device.type == "meta" for t in moments)  # beside their parameters
    assert target.state.scaler_d is not None and saving.state.scaler_d is not None
    assert target.state.scaler_d.get_scale() == saving.state.scaler_d.get_scale()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_restored_trial_continues_bit_for_bit(tmp_path: Path, precision: str) -> None:
    placement = place("cpu", precision, channels_last=True)
    first = _runner(placement)
    first.train(3)
    report = first.evaluate()
    assert math.isfinite(report["fid32"]) and report["step"] == 3
    first.save(tmp_path / "state.pt")
    first.train(3)
    second = _runner(placement, seed=7)  # another seed: everything must come from the checkpoint
    second.restore(tmp_path / "state.pt")
    second.train(3)
    assert first.meter.means() == second.meter.means()
    assert all(torch.equal(a, b) for a, b in zip(first.state.generator.state_dict().values(),
                                                 second.state.generator.state_dict().values(), strict=True))


def test_checkpoints_hold_only_cpu_tensors() -> None:
    state = build_state(_config(ema_decay=0.9), 3, 32, place("cpu", "fp16", channels_last=True), seed=0)
    train_step(state, Blobs())
    saved = training_state(state)
    found: list[torch.Tensor] = []
    _tensors(saved, found)
    assert len(found) > 50 and all(t.device.type == "cpu" for t in found)
    assert state.scaler_g is not None and saved["scaler_g"]["scale"] == state.scaler_g.get_scale()
    assert saved["rng_device"] == "cpu"


def test_a_sampling_generator_from_another_device_kind_reseeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPU search resumed with --device cpu: a CUDA generator's state does not fit a CPU one."""
    state = build_state(_config(), 3, 32, "cpu", seed=4)
    train_step(state, Blobs())
    saved = copy.deepcopy(training_state(state))
    saved |= {"rng_device": "cuda", "rng": torch.zeros(16, dtype=torch.uint8)}  # a CUDA Philox state
    torch.save(saved, tmp_path / "state.pt")
    again, other = build_state(_config(), 3, 32, "cpu", seed=4), build_state(_config(), 3, 32, "cpu", seed=4)
    with caplog.at_level(logging.WARNING):
        restore_training_state(again, load_checkpoint(tmp_path / "state.pt"))
        restore_training_state(other, load_checkpoint(tmp_path / "state.pt"))
    assert "sampling generator was on cuda" in caplog.text and again.step == 1
    assert train_step(again, Blobs()) == train_step(other, Blobs())  # a fresh stream, but a fixed one


# --- what MLflow records


def test_the_runs_record_the_precision_asked_and_the_one_each_trial_used(smoke_search: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(smoke_search["tracking_uri"])
    parent = client.get_run(smoke_search["parent_run_id"])
    assert parent.data.params["precision"] == "auto"
    trials = client.search_runs([smoke_search["experiment_id"]], "tags.role = 'trial'")
    assert len(trials) == 4
    placed = {(run.data.tags["device"], run.data.tags["compute_precision"]) for run in trials}
    assert placed == {("cpu", place("cpu").precision)}  # auto: bf16 where this CPU has it
    # the k-NN precision metric of the same reports is still a metric, not overwritten by the tag's value
    assert all(0 <= run.data.metrics["precision"] <= 1 for run in trials)


# --- helpers


def _runner(placement: Placement, seed: int = 0) -> TrialRunner:
    images = blob_images(64)
    data = CachedDataset(images, np.zeros(len(images), np.int64), ("blob",), "blobs", Path("blobs.npy"))
    reference = FeatureStats(MomentFeatures.dims)
    reference.update(MomentFeatures()(torch.from_numpy(images).float() / 127.5 - 1)[0])
    settings = RunSettings(dataset="folder:blobs", fid_n=32, eval_every=3, seed=seed)
    return TrialRunner(_config(), settings, data, reference, MomentFeatures(), placement)


def _tensors(value: object, found: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _tensors(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensors(item, found)


# --- what only a GPU can show (deselected by default; run by bench/gpu_acceptance.sh)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_cuda_auto_precision_trains_and_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit for bit after a restore, with cuDNN told to pick deterministic kernels: by default its
    convolution backward passes add in an order that changes from run to run."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    placement = place("cuda")
    expected = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
    assert placement.precision == expected and placement.channels_last and placement.fused
    saving = _runner(placement)
    saving.train(20)
    assert math.isfinite(saving.evaluate()["fid32"])
    saving.save(tmp_path / "state.pt")
    saving.train(5)
    restored = _runner(placement, seed=9)
    restored.restore(tmp_path / "state.pt")  # crashed with "RNG state must be a torch.ByteTensor"
    restored.train(5)
    assert restored.step == saving.step == 25
    assert torch.equal(restored.state.rng.get_state(), saving.state.rng.get_state())
    for a, b in zip(saving.state.generator.parameters(), restored.state.generator.parameters(), strict=True):
        assert torch.equal(a, b)
    found: list[torch.Tensor] = []
    _tensors(torch.load(tmp_path / "state.pt", weights_only=False), found)  # no map_location: as saved
    assert found and all(t.device.type == "cpu" for t in found)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_cuda_every_precision_matches_fp32s_first_step(precision: str) -> None:
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs Ampere or later")
    exact = build_state(_config(), 3, 32, place("cuda", "fp32", channels_last=False), seed=1)
    other = build_state(_config(), 3, 32, place("cuda", precision), seed=1)
    a = train_step(exact, DeviceImages(blob_images(64), "cuda"))
    b = train_step(other, DeviceImages(blob_images(64), "cuda", channels_last=True))
    tolerance = {"bf16": 0.03, "fp16": 0.01, "fp32": 0.01}[precision]  # fp32 on cuDNN: TF32 both sides
    # as the CPU twin above: fp16's first D update overflows at the scaler's initial scale and is
    # skipped, so its G step meets another D than fp32's: only what comes before that update compares
    keys = ("d_loss", "d_real", "d_fake") + (("g_loss",) if precision != "fp16" else ())
    for key in keys:
        assert getattr(b, key) == pytest.approx(getattr(a, key), rel=tolerance), key
