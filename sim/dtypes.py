"""Number formats: a format name in, its storage bytes per element and compute-rate key out.

A format knows its element bits and its scale overhead (one scale of `scale_bits` per
`scale_block` elements, plus an optional per-tensor scale, which is negligible per element).
`rate_key` names the hardware peak it runs at (`GPUSpec.peak_flops_per_s[rate_key]`);
`block_scaled` formats additionally need the GPU to list them in `block_scaled_formats`.
`compute` is False for weight-only formats (INT4): they must be dequantized to the
activation format before the GEMM.

Bytes per element = (element_bits + scale_bits / scale_block) / 8: BF16/FP16 2, FP8/INT8 1,
MXFP8 (8 + 8/32)/8 = 1.03125, NVFP4 (4 + 8/16)/8 = 0.5625 (the per-tensor FP32 scale is
negligible), MXFP4 (4 + 8/32)/8 = 0.53125, INT4 (4 + 16/128)/8 = 0.515625.
Quality notes describe the format only; the simulator invents no accuracy numbers
(sensitivity by component: weights < activations < KV cache < attention).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    element_bits: int
    scale_bits: int = 0
    scale_block: int = 0
    rate_key: str = ""
    block_scaled: bool = False
    compute: bool = True
    quality_note: str = ""

    @property
    def bytes_per_element(self) -> float:
        """Storage bytes per element including block-scale overhead."""
        scale = self.scale_bits / self.scale_block if self.scale_block else 0.0
        return (self.element_bits + scale) / 8.0


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("bf16", 16, rate_key="bf16", quality_note="reference precision"),
        Format("fp16", 16, rate_key="fp16", quality_note="reference precision (narrower range)"),
        Format(
            "fp8",
            8,
            rate_key="fp8",
            quality_note="E4M3 (3 mantissa bits) with per-tensor or per-channel scales",
        ),
        Format(
            "mxfp8",
            8,
            scale_bits=8,
            scale_block=32,
            rate_key="fp8",
            block_scaled=True,
            quality_note="OCP MX: E4M3 elements, one E8M0 scale per 32",
        ),
        Format(
            "nvfp4",
            4,
            scale_bits=8,
            scale_block=16,
            rate_key="fp4",
            block_scaled=True,
            quality_note="E2M1 elements, one FP8 scale per 16 plus a per-tensor FP32 scale",
        ),
        Format(
            "mxfp4",
            4,
            scale_bits=8,
            scale_block=32,
            rate_key="fp4",
            block_scaled=True,
            quality_note="OCP MX: E2M1 elements, one E8M0 scale per 32",
        ),
        Format("int8", 8, rate_key="int8", quality_note="per-channel scales; SmoothQuant-style"),
        Format(
            "int4",
            4,
            scale_bits=16,
            scale_block=128,
            rate_key="",
            compute=False,
            quality_note="4-bit integers, one fp16 scale per 128 (AWQ/GPTQ-style groups); no "
            "tensor-core rate, so GEMMs dequantize it (weight-only)",
        ),
    )
}

ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "e4m3": "fp8", "fp8_e4m3": "fp8"}


def get_format(name: str) -> Format:
    """Look up a format by name; a clear error lists the known names."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(f"unknown number format {name!r}: use one of {known}")
    return FORMATS[key]
