"""GPU speed options on the CPU: bf16 autocast and channels-last run every model, and bf16
training follows fp32 (issue: the flagship run ready for a GPU)."""
import pytest

from conftest import CONF, needs_fashion_mnist

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", [pytest.param(m, marks=[] if m in ("mlp", "swr_cnn_bn")
                                                else [pytest.mark.slow]) for m in MODELS])
def test_bf16_channels_last_forward_and_backward(run_cfg, model):
    result = run_cfg(["experiment=fmnist_mlp", "dataset=cifar10", f"model={model}", "ci=smoke",
                      "device=cpu", "train.precision=bf16", "train.channels_last=true",
                      "train.max_batches=1", "train.max_eval_batches=1", "ci.n_test=8"])
    assert result["status"] == "completed", result.get("error")
    assert result["precision"] == "bf16"


@needs_fashion_mnist
def test_bf16_loss_follows_fp32_on_fashion_mnist(run_cfg):
    def loss(precision):
        r = run_cfg(["experiment=fmnist_mlp", "device=cpu", "train.epochs=1", "train.eval_test=false",
                     "phases.0.subset.n=5120", "train.batch_size=256",  # 20 steps of real data
                     f"train.precision={precision}", "seed=1"])
        assert r["phases"][0]["steps"] == 20
        return r["phases"][0]["end"]["train_loss"]
    fp32, bf16 = loss("fp32"), loss("bf16")
    assert abs(bf16 - fp32) <= 0.02 * fp32, (fp32, bf16)
