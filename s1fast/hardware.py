"""One table of GPUs: dense bf16 peak, HBM bandwidth, memory, NVLink; read by the trainer (MFU), the
projection and the benchmarks.

Sources: NVIDIA's H100, H200 and A100 datasheets (dense bf16 = half the "with sparsity" figure; NVLink per
direction = half the total) and, where a row says so, the total memory nvidia-smi reports (the datasheet's
otherwise). ``GB`` is 1e9 bytes throughout.
"""
from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float      # dense bf16
    memory_gb: float        # total device memory, 1e9 bytes
    hbm_tbps: float
    nvlink_gbps: float      # per GPU, per direction
    gpus_per_node: int = 8
    match: str = ""         # substring of torch.cuda.get_device_name that identifies the card

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops * 1e12

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tbps * 1e12


GPUS = {
    # memory: nvidia-smi's 81,559 MiB for the "80 GB" H100s and 81,920 MiB for the A100; the H200's datasheet
    # 141 GB. NVLink 4: 900 GB/s total = 450 per direction (the PCIe card's bridge and NVLink 3: 600 = 300).
    "h100": GPU("H100 SXM 80GB", 989.0, 81559 * 2**20 / GB, 3.35, 450.0, match="H100"),
    "h200": GPU("H200 SXM 141GB", 989.0, 141.0, 4.8, 450.0, match="H200"),
    "h100-pcie": GPU("H100 PCIe 80GB", 756.0, 81559 * 2**20 / GB, 2.0, 300.0, match="H100 PCIe"),
    "a100": GPU("A100 SXM 80GB", 312.0, 81920 * 2**20 / GB, 2.039, 300.0, match="A100"),
}

# the projection's and the benchmarks' choices
PROJECTED_GPUS = ("h100", "h200")


def gpu_for_device_name(name: str) -> GPU | None:
    """The table's entry for a CUDA device name (the most specific match wins), or None if unknown."""
    hits = [g for g in GPUS.values() if g.match and g.match in name]
    return max(hits, key=lambda g: len(g.match)) if hits else None
