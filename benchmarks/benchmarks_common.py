"""What every benchmark prints with its numbers: the machine and the versions it ran on."""
import os
import platform

import torch


def machine() -> str:
    """One line: CPU (cores, load), GPU if any, Python, torch, and the torch threads."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores "
            f"(load {load}), {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")
