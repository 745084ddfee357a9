"""
Model FLOPs utilization (MFU), as nanoGPT reports it: the FLOPs a training step of a DiD model does, counted as the
hardware runs them, over one device's peak FLOP/s. train.py and bench.py report it; the model is did.py's.
"""

import torch

from did import flex_block_mask

PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L40S': 362e12, 'A10G': 125e12, '4090': 165e12}  # bf16 dense


def peak_flops(device):
    """One GPU's bf16 dense peak FLOP/s, from its name (for MFU); None off CUDA or for a GPU not in the table."""
    if not str(device).startswith('cuda'):
        return None
    return next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name(device)), None)


def live_fraction(block_mask):
    """Share of a BlockMask's tiles that FlexAttention computes (partly or fully unmasked); the rest it skips."""
    live = block_mask.kv_num_blocks.sum() + (0 if block_mask.full_kv_num_blocks is None else block_mask.full_kv_num_blocks.sum())
    q_tiles = -(-block_mask.seq_lengths[0] // block_mask.BLOCK_SIZE[0])
    kv_tiles = -(-block_mask.seq_lengths[1] // block_mask.BLOCK_SIZE[1])
    return live.item() / (q_tiles * kv_tiles)


def estimate_flops(model, batch, block_size, head_tokens, attn_frac=1.0):
    """FLOPs of one fwd+bwd over `batch` sequences trained at block_size (0: causal), counted as the hardware
    runs them (nanoGPT's 6N + attention): 2L tokens go through the blocks for block diffusion (x_t and x_0
    both run), L for B = L and causal; head_tokens positions in all go through the head (the masked x_t
    positions, or every position for causal). On the dense path the last layer runs only the noisy half past
    its keys and values (n_out in hidden); FlexAttention runs it whole. attn_frac: attention_fraction."""
    cfg = model.config
    L, C = cfg.seq_len, cfg.n_embd
    T = 2 * L if 0 < block_size < L else L
    n_trunk = sum(p.numel() for p in model.h.parameters())
    flops = 6 * (n_trunk * T * batch + model.lm_head.weight.numel() * head_tokens) + 12 * cfg.n_layer * C * T * T * batch * attn_frac
    if T == 2 * L and not model.flex:  # the last layer: queries, output projection and MLP on L of the 2L tokens
        rest = sum(p.numel() for p in model.h[-1].parameters()) - model.h[-1].attn.c_attn.weight.numel()
        flops -= 6 * rest * L * batch + 12 * C * L * T * batch * attn_frac
    return flops


def attention_fraction(model, block_size):
    """The share of the T x T attention scores the kernel computes at this block size (0: causal): all of them
    for dense SDPA with a mask, the live tiles of the FlexAttention BlockMask (live_fraction), about half for a
    causal kernel on CUDA (the CPU's math kernel computes them all)."""
    dev = model.lm_head.weight.device
    if block_size == 0:
        return 0.5 if dev.type == 'cuda' else 1.0
    if model.flex and block_size < model.config.seq_len:
        return live_fraction(flex_block_mask(model.config.seq_len, block_size, str(dev)))
    return 1.0
