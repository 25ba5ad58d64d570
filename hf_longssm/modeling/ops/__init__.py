"""Kernel-free maths of the state-carrying paths, each beside its step-by-step torch reference.

* `selective`: Mamba-1 / FalconMamba (`selective_scan_ref`, `selective_scan` with a hand-written backward and
  its dispatch name `selective_scan_chunked`, and the exact initial-state correction that turns a zero-start kernel
  into a scan from a carried state);
* `ssd`: Mamba-2 (`ssd_scan_ref`, `ssd_chunk_scan`);
* `gated_delta`: Gated DeltaNet (`gated_delta_rule_ref`, `gated_delta_rule_chunked`);
* `dplr`: the diagonal-plus-low-rank delta rule, fla's RWKV-7 layers (`dplr_ref`, `dplr_chunked`);
* `gla`: gated linear attention, fla's GLA and RWKV-6 layers (`gla_ref`, `gla_chunked`, `rwkv6_ref`,
  `rwkv6_chunked`);
* `conv`: the causal depthwise conv over [carried window, segment] (`causal_conv1d_ref`);
* `common`: the discretised step and the stable segment sums they share.
"""

from .common import discretize, segsum
from .conv import causal_conv1d_ref, check_conv_activation, next_conv_state
from .dplr import dplr_chunked, dplr_ref
from .gated_delta import gated_delta_rule_chunked, gated_delta_rule_ref
from .gla import gla_chunked, gla_ref, rwkv6_chunked, rwkv6_ref
from .selective import (
    initial_state_correction,
    selective_scan,
    selective_scan_chunked,
    selective_scan_from_zero_with_correction,
    selective_scan_ref,
)
from .ssd import ssd_chunk_scan, ssd_scan_ref


__all__ = [
    "causal_conv1d_ref",
    "check_conv_activation",
    "discretize",
    "dplr_chunked",
    "dplr_ref",
    "gated_delta_rule_chunked",
    "gated_delta_rule_ref",
    "gla_chunked",
    "gla_ref",
    "initial_state_correction",
    "next_conv_state",
    "rwkv6_chunked",
    "rwkv6_ref",
    "segsum",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_from_zero_with_correction",
    "selective_scan_ref",
    "ssd_chunk_scan",
    "ssd_scan_ref",
]
