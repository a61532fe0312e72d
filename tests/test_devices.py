"""A trial that Ray gave a GPU and that cannot use CUDA stops at once with one line, in both places a
trial picks its device (its own Tune process, and a Ray Train worker: ``trainers.loop._train``),
instead of training on the CPU. The sweep-level check on a GPU node: tests/test_cluster.py."""

from __future__ import annotations

import pytest
import torch

from common.errors import TrialError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is visible here: nothing to refuse")


def _one_line(err: TrialError) -> str:
    line = str(err)
    assert "\n" not in line, line
    assert f"torch sees no CUDA device: torch {torch.__version__} is a CPU-only build" in line, line
    assert "CUDA_VISIBLE_DEVICES=" in line and "or pass --gpus-per-worker 0 to train on CPUs" in line, line
    return line


def test_trial_device_is_the_cpu_for_a_cpu_trial_and_refuses_a_gpu_trial_without_cuda():
    from trainers.devices import trial_device

    assert trial_device(0) == torch.device("cpu")
    with pytest.raises(TrialError) as e:
        trial_device(1)
    _one_line(e.value)


def test_the_training_loop_refuses_a_gpu_trial_handed_a_cpu_device(tmp_path):
    """What Ray Train's get_device() gives a use_gpu worker that has no CUDA: the loop stops before
    it reads the data or builds the model (a dataset path that does not exist shows it did not)."""
    from trainers.config import Resources, TrainSettings, TrialConfig
    from trainers.loop import _train

    settings = TrainSettings(model=str(tmp_path / "no-model"), dataset=str(tmp_path / "no-data.jsonl"))
    config = TrialConfig(settings, resources=Resources(gpus=1)).to_tune({})
    with pytest.raises(TrialError) as e:
        _train(config, torch.device("cpu"), lambda metrics, directory: None, None)
    _one_line(e.value)
