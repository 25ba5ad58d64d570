"""Mamba-2: the SSD scan started from carried `initial_states`.

* `ssd_scan_ref`: the recurrence step by step (the reference);
* `ssd_chunk_scan`: the chunked state-space-dual form in plain PyTorch (intra-chunk matrix, inter-chunk recurrence
  from `initial_states`), the torch path. On CUDA with mamba-ssm, `mamba_chunk_scan_combined(...,
  initial_states=, return_final_states=True)` serves the same call (`hf_longssm.modeling.kernels`).

Shape legend: b = batch, l = sequence, c = chunk, t/s = positions inside a chunk, h = heads, p = head_dim,
g = groups, n = SSM state size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import segsum


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step Mamba-2 recurrence (the reference).

    x `(b, l, h, p)`; dt `(b, l, h)` already discretized (bias, softplus, limits); A, D `(h,)`; B, C `(b, l, g, n)`;
    initial_states `(b, h, p, n)`. Returns `(y (b, l, h, p), final_states (b, h, p, n))`, float32.
    """
    batch, seq_len, heads, head_dim = x.shape
    reps = heads // B.shape[2]
    B = B.float().repeat_interleave(reps, dim=2)
    C = C.float().repeat_interleave(reps, dim=2)
    x, dt = x.float(), dt.float()
    h = x.new_zeros(batch, heads, head_dim, B.shape[-1]) if initial_states is None else initial_states.float()
    ys = []
    for t in range(seq_len):
        decay = torch.exp(dt[:, t] * A.float())[:, :, None, None]  # (b, h, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * D.float()[:, None]
    return y, h


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked Mamba-2 scan from `initial_states`; same arguments and returns as `ssd_scan_ref`."""
    batch, seq_len, heads, head_dim = x.shape
    reps = heads // B.shape[2]
    x, dt = x.float(), dt.float()
    B = B.float().repeat_interleave(reps, dim=2, output_size=heads)
    C = C.float().repeat_interleave(reps, dim=2, output_size=heads)
    # Pad to whole chunks with dt = 0: decay 1 and no input, so the final state is unchanged.
    pad = (chunk_size - seq_len % chunk_size) % chunk_size
    x_dt = F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad))
    log_decay = F.pad(dt * A.float(), (0, 0, 0, pad))
    B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    chunks = (seq_len + pad) // chunk_size
    x_dt = x_dt.reshape(batch, chunks, chunk_size, heads, head_dim)
    B = B.reshape(batch, chunks, chunk_size, heads, -1)
    C = C.reshape(batch, chunks, chunk_size, heads, -1)
    log_decay = log_decay.reshape(batch, chunks, chunk_size, heads).permute(0, 3, 1, 2)  # (b, h, c, t)
    cum_decay = torch.cumsum(log_decay, dim=-1)

    # 1. Inside each chunk: attention-like (b, c, t, s, h) scores masked by the decays.
    scores = torch.einsum("bcthn,bcshn->bctsh", C, B) * torch.exp(segsum(log_decay)).permute(0, 2, 3, 4, 1)
    y = torch.einsum("bctsh,bcshp->bcthp", scores, x_dt)

    # 2. Each chunk's own contribution to the state at its end.
    decay_to_end = torch.exp(cum_decay[..., -1:] - cum_decay).permute(0, 2, 3, 1)  # (b, c, t, h)
    chunk_states = torch.einsum("bcthn,bcthp->bchpn", B * decay_to_end[..., None], x_dt)

    # 3. Across chunks, starting from the carried state: the state entering every chunk, and the final state.
    start = x.new_zeros(batch, heads, head_dim, B.shape[-1]) if initial_states is None else initial_states.float()
    chunk_states = torch.cat([start[:, None], chunk_states], dim=1)  # (b, c+1, h, p, n)
    decay_chunk = torch.exp(segsum(F.pad(cum_decay[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, chunk_states)
    entering, final_states = states[:, :-1], states[:, -1]

    # 4. What the state entering each chunk gives at every position inside it.
    decay_from_start = torch.exp(cum_decay).permute(0, 2, 3, 1)  # (b, c, t, h)
    y = y + torch.einsum("bcthn,bchpn->bcthp", C, entering) * decay_from_start[..., None]
    y = y.reshape(batch, -1, heads, head_dim)[:, :seq_len]
    if D is not None:
        y = y + x * D.float()[:, None]
    return y, final_states
