"""Weight initialization schemes, selectable per model config."""
import math

import torch
from torch import nn

SCHEMES = ("default", "torch", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
           "pm_sigma")


@torch.no_grad()
def pm_sigma_(w: torch.Tensor) -> torch.Tensor:
    """+-sigma with a fair random sign, sigma^2 = 2 / (fan_in + fan_out), Xavier-normal's variance
    (Wimmer's thesis, Sec. 3.4.3.1, Fig. 3.4b): only the signs need storing."""
    receptive = w[0][0].numel() if w.dim() > 2 else 1
    sigma = math.sqrt(2.0 / ((w.shape[1] + w.shape[0]) * receptive))
    return w.copy_((torch.randint_like(w, 2) * 2 - 1) * sigma)


def initialize(model: nn.Module, scheme: str = "default", zero_bias: bool = False) -> nn.Module:
    """Re-initialize conv and linear weights with `scheme` ('default' keeps what the constructor
    drew; 'torch' redraws torch's own, kaiming_uniform(a=sqrt 5), biases included)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; valid: {', '.join(SCHEMES)}")
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        if scheme == "torch":
            m.reset_parameters()
        elif scheme == "he_normal":
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif scheme == "he_uniform":
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
        elif scheme == "glorot_normal":
            nn.init.xavier_normal_(m.weight)
        elif scheme == "glorot_uniform":
            nn.init.xavier_uniform_(m.weight)
        elif scheme == "pm_sigma":
            pm_sigma_(m.weight)
        if zero_bias and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model
