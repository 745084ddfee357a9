"""
Diffusion in Diffusion (DiD), in one file: model, mix-scale block-diffusion loss, samplers.

DiD (Ma, Cui, Han, Wang 2026, arXiv 2601.13599) is a block-diffusion language model that
  1. drafts a sequence with small blocks (semi-autoregressive block diffusion, KV-cached), then
  2. remasks the draft tokens it was least sure of when it wrote them ("snapshot confidence")
     and denoises them again with one global block (full bidirectional attention).
One network does both because it is trained with *mix-scale* block sizes (mostly small, sometimes
the whole sequence). Everything else is BD3-LM (Arriola et al. 2025, arXiv 2503.09573), which is
itself MDLM (Sahoo et al. 2024, arXiv 2406.07524) applied block by block.

Differences from a GPT-2 style transformer:
- rotary position embeddings instead of learned ones; untied output head; no weight tying
- one extra token, MASK (id vocab_size - 1); the head can never predict MASK or padding ids
- three attention patterns from one set of weights: block diffusion (the 2L "[x_t ; x_0]" mask),
  global masked diffusion (block size = L, plain full attention) and causal next-token prediction
- no time conditioning: the masked-diffusion denoiser's optimum p(x_0 | x_t) does not depend on t
  (the number of MASKs in x_t already says how noisy it is; MDLM, and RADD: Ou et al. 2024), and BD3-LM feeds its
  adaLN a constant zero time anyway.

Sections: config and model / attention masks / forward noise and loss / samplers / evaluation.
"""

import ast
import contextlib
import difflib
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache, wraps

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

# -----------------------------------------------------------------------------
# config and model

@dataclass
class DiDConfig:
    seq_len: int = 1024        # L, the length of every training and generated sequence
    vocab_size: int = 50258    # 50257 GPT-2 tokens + MASK; MASK is always the last id (vocab_size - 1)
    n_layer: int = 12          # BD3-LM "small": 12 layers x 768 wide x 12 heads
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0       # on the residual branches (BD3-LM used 0.1)

    @property
    def mask_id(self):
        return self.vocab_size - 1

    @property
    def padded_vocab(self):
        # pad the embedding and head to a multiple of 64 for faster matmuls; padded ids are never predicted
        return (self.vocab_size + 63) // 64 * 64


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class SelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        # no biases on qkv/out: same weight shapes as BD3-LM's attn_qkv / attn_out
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, attn_mask=None, is_causal=False, cache=None, layer=0, n_out=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin  # cos, sin: (T, hs), rotary positions of these T tokens
        k = k * cos + rotate_half(k) * sin
        q, k = q.to(v.dtype), k.to(v.dtype)  # under autocast: rotate in fp32, attend in bf16 like v
        if cache is not None:
            # sampling: write this block's keys/values after the cached clean prefix and attend to
            # prefix + block with no mask, which is exactly what a block sees in training (M_BD + M_OBC)
            k, v = cache.put(layer, k, v)  # (B, nh, n + T, hs)
        if n_out is not None:  # only the first n_out queries are needed; keys/values come from all T tokens
            q, attn_mask, T = q[:, :, :n_out], attn_mask[:n_out], n_out
        if isinstance(attn_mask, BlockMask):  # FlexAttention (CUDA): skips the fully masked tiles
            y = compiled_flex_attention()(q, k, v, block_mask=attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # no attention
            # dropout: BD3-LM drops out the residual branches only, and FlexAttention could not match it
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return F.dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x):
        x = F.gelu(self.c_fc(x), approximate='tanh')
        return F.dropout(self.c_proj(x), self.dropout, self.training)


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        # a learned per-channel gate on each residual branch, zero at init: every block starts as the identity
        # and opens as it learns. BD3-LM's DiT gets the same from its zero-initialised adaLN gates (fed a
        # constant time, they are constant vectors); without them our model learned ~0.4 nats/char slower per step.
        self.gate_1 = nn.Parameter(torch.zeros(config.n_embd))
        self.gate_2 = nn.Parameter(torch.zeros(config.n_embd))

    def forward(self, x, cos, sin, attn_mask=None, is_causal=False, cache=None, layer=0, n_out=None):
        x = x[:, :n_out] + self.gate_1 * self.attn(self.ln_1(x), cos, sin, attn_mask, is_causal, cache, layer, n_out)
        return x + self.gate_2 * self.mlp(self.ln_2(x))


class DiD(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab)  # untied, with bias (BD3-LM)
        hs = config.n_embd // config.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, hs, 2).float() / hs))
        freqs = torch.outer(torch.arange(config.seq_len).float(), inv_freq)  # (L, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout over the whole head dim
        self.register_buffer('cos', emb.cos(), persistent=False)  # (L, hs)
        self.register_buffer('sin', emb.sin(), persistent=False)
        self.flex = False  # True: the 2L training mask runs through FlexAttention (see flex_block_mask)
        # initialisation as BD3-LM's DiT: PyTorch's default for the Linear layers (kaiming-uniform, std
        # 1/sqrt(3 fan_in)), the embedding at the same scale (uniform in +-1/sqrt(C); N(0, 1), nn.Embedding's
        # default, and GPT-2's std 0.02 both learned slower per step), the gates above at zero, and a zero head:
        # the first prediction is uniform (loss ln(V-1) per masked token, before the 1/t weight)
        nn.init.uniform_(self.wte.weight, -1 / math.sqrt(config.n_embd), 1 / math.sqrt(config.n_embd))
        nn.init.zeros_(self.lm_head.weight)
        nn.init.zeros_(self.lm_head.bias)

    def get_num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx, pos, attn_mask=None, is_causal=False, cache=None, n_out=None):
        """The trunk: idx (B, T) token ids at rotary positions pos (T,), or (B, T) per row -> final hidden states
        (B, T, C). n_out: return only the first n_out positions; the last layer then skips the others' attention
        and MLP (the clean half of the 2L training input is only ever read through its keys and values)."""
        x = self.wte(idx)
        cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)  # (T, hs) or (B, T, hs)
        if pos.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs): broadcast over heads
        for i, block in enumerate(self.h):
            x = block(x, cos, sin, attn_mask, is_causal, cache, i, n_out if i == len(self.h) - 1 else None)
        return self.ln_f(x)

    def logits(self, h, weight_t=None):
        """Head: (..., C) -> (..., padded_vocab) fp32 logits; MASK and padding ids get -inf (SUBS, "zero
        masking probability": the denoiser must always name a real token). weight_t: the head weight as a
        contiguous (C, V) copy, which the sampler passes: for a few rows that layout is ~30% faster on a CPU."""
        logits = self.lm_head(h) if weight_t is None else torch.addmm(self.lm_head.bias, h, weight_t)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logits[..., self.config.mask_id:] = float('-inf')
        return logits

    def forward(self, x0, x_t=None, t=None, block_size=None):
        """Training loss. With x_t: the block-diffusion NELBO per token (see diffusion_loss). Without x_t:
        the causal next-token loss (the AR baseline and the perplexity judge)."""
        if x_t is None:
            return ar_loss(self, x0)
        return diffusion_loss(self, x0, x_t, t, block_size)

    def estimate_flops(self, batch, block_size, head_tokens, attn_frac=1.0):
        """FLOPs of one fwd+bwd over `batch` sequences trained at block_size (0: causal), counted as the hardware
        runs them (nanoGPT's 6N + attention): 2L tokens go through the blocks for block diffusion (x_t and x_0
        both run), L for B = L and causal; head_tokens positions in all go through the head (the masked x_t
        positions, or every position for causal). attn_frac: the share of the T x T scores the attention kernel
        computes: 1 for dense SDPA with a mask (it computes them all), the live tiles of a FlexAttention
        BlockMask (live_fraction), about 1/2 for a causal kernel."""
        cfg = self.config
        T = 2 * cfg.seq_len if 0 < block_size < cfg.seq_len else cfg.seq_len
        n_trunk = sum(p.numel() for p in self.h.parameters())
        return (6 * (n_trunk * T * batch + self.lm_head.weight.numel() * head_tokens)
                + 12 * cfg.n_layer * cfg.n_embd * T * T * batch * attn_frac)


# -----------------------------------------------------------------------------
# attention masks (True = may attend). Built eagerly, once, and cached: under torch.compile they stay outside
# the graph (traced in, they would be rebuilt every step, and inductor's CPU codegen fails on their boolean algebra)

def eager(fn):
    """torch.compiler.disable(fn), made on the first call after something imported dynamo (torch.compile does):
    the decorator itself imports dynamo, which would add a second to the start of every script."""
    disabled = None
    @wraps(fn)
    def wrapper(*args):
        nonlocal disabled
        if 'torch._dynamo' not in sys.modules:  # nothing is compiling in this process
            return fn(*args)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args)
    return wrapper


@eager
@lru_cache(maxsize=16)
def block_diff_mask(L, block_size, device='cpu'):
    """The 2L x 2L training mask of BD3-LM (its eq. for M_full) for input [x_t ; x_0], built once per block size.
    Queries/keys 0..L-1 are the noisy copy x_t, L..2L-1 the clean copy x_0."""
    i = torch.arange(2 * L, device=device)
    is_x0 = i >= L
    blk = (i % L) // block_size
    q0, k0 = is_x0[:, None], is_x0[None, :]
    qb, kb = blk[:, None], blk[None, :]
    bd = (q0 == k0) & (qb == kb)   # block-diagonal: a block sees itself, within its own copy
    obc = ~q0 & k0 & (qb > kb)     # offset block-causal: noisy block b reads the clean blocks < b
    bc = q0 & k0 & (qb >= kb)      # block-causal: the clean copy is what the sampler's KV cache holds
    return bd | obc | bc           # (2L, 2L); the clean copy never sees the noisy copy


@eager
@lru_cache(maxsize=16)
def flex_block_mask(L, block_size, device='cuda'):
    """block_diff_mask as a FlexAttention BlockMask (built once per block size). About a quarter of the 2L x 2L
    scores are live; flex skips the tiles that are fully masked, the dense SDPA path computes them all."""
    def mask_mod(b, h, q, kv):
        q0, k0 = q >= L, kv >= L
        qb, kb = (q % L) // block_size, (kv % L) // block_size
        return ((q0 == k0) & (qb == kb)) | (~q0 & k0 & (qb > kb)) | (q0 & k0 & (qb >= kb))
    return create_block_mask(mask_mod, None, None, 2 * L, 2 * L, device=device)


def live_fraction(block_mask):
    """Share of a BlockMask's tiles that FlexAttention computes (partly or fully unmasked); the rest it skips."""
    live = block_mask.kv_num_blocks.sum() + (0 if block_mask.full_kv_num_blocks is None else block_mask.full_kv_num_blocks.sum())
    q_tiles = -(-block_mask.seq_lengths[0] // block_mask.BLOCK_SIZE[0])
    kv_tiles = -(-block_mask.seq_lengths[1] // block_mask.BLOCK_SIZE[1])
    return live.item() / (q_tiles * kv_tiles)


@lru_cache(maxsize=1)
def compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


@eager
@lru_cache(maxsize=16)
def block_causal_mask(L, block_size, device='cpu'):
    """The clean-copy part of block_diff_mask alone, (L, L): the uncached sampler's mask."""
    blk = torch.arange(L, device=device) // block_size
    return blk[:, None] >= blk[None, :]


# -----------------------------------------------------------------------------
# forward noise and the loss

def add_noise(x0, block_size, mask_id, eps_min=1e-3, eps_max=1.0, resample=False, generator=None, keep_first=False):
    """Mask x0 (B, L) block by block. Returns x_t (B, L) and t (B, L), t constant within a block.

    One t per (sequence, block), stratified over all blocks of the batch ("antithetic", BD3-LM _sample_t)
    to cut the variance of the loss, then clipped to [eps_min, eps_max] (BD3-LM's clipped schedule: small
    blocks prefer heavy masking). With the linear schedule alpha_t = 1 - t, each token is masked with
    probability t. resample=True redraws a block's mask until its realized masked fraction lies in the
    interval too (BD3-LM training.resample), so no block is trained on a fraction its t never asks for.
    keep_first=True never masks position 0, where the sequence's <|endoftext|> (BOS) sits (BD3-LM ignore_bos)."""
    B, L = x0.shape
    nblk = L // block_size
    n = B * nblk
    g = dict(generator=generator, device=x0.device)
    u = (torch.rand(n, **g) + torch.arange(n, device=x0.device)) / n  # one draw in each of n strata
    u = u[torch.randperm(n, **g)].view(B, nblk)  # shuffle so no block position owns a stratum
    t = eps_min + (eps_max - eps_min) * u
    t = t.repeat_interleave(block_size, dim=1)  # (B, L)
    masked = torch.rand(B, L, **g) < t
    if resample:
        lo = eps_min if eps_min > 1e-3 else -1.0  # BD3-LM enforces only the bounds that are clipped
        hi = eps_max if eps_max < 1.0 else 2.0
        if not any(lo <= j / block_size <= hi for j in range(block_size + 1)):
            raise ValueError(f"no masked fraction j/{block_size} lies in [{eps_min}, {eps_max}]: widen the "
                             f"noise interval for block size {block_size} or set resample=False")
        for _ in range(1000):
            frac = masked.view(B, nblk, block_size).float().mean(-1)
            bad = ((frac < lo) | (frac > hi)).repeat_interleave(block_size, dim=1)  # (B, L)
            if not bad.any():
                break
            masked = torch.where(bad, torch.rand(B, L, **g) < t, masked)
    if keep_first:
        masked[:, 0] = False
    x_t = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return x_t, t


class HeadCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of the head's logits h @ W^T + b (N, V) against targets (N,), with ids >= mask_id
    excluded (SUBS: MASK and padding get zero probability). The same numbers as F.cross_entropy(model.logits(h)),
    but the softmax is computed once and reused in backward instead of exponentiating N x V logits twice: on
    a CPU the 50K-way softmax costs about as much as the head matmul itself."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, mask_id):
        dt = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        logits = torch.addmm(bias.to(dt), h.to(dt), weight.to(dt).t())
        logits = logits.to(torch.promote_types(dt, torch.float32))  # (N, V), at least fp32
        logits[:, mask_id:] = float('-inf')
        target_logit = logits.gather(1, target[:, None]).squeeze(1)
        m = logits.amax(dim=1, keepdim=True)
        probs = logits.sub_(m).exp_()  # in place: the logits are not needed again
        s = probs.sum(dim=1, keepdim=True)
        probs.div_(s)
        ctx.save_for_backward(h, weight, probs, target)
        ctx.dt = dt
        return s.log().squeeze(1) + m.squeeze(1) - target_logit  # log-sum-exp minus the target logit

    @staticmethod
    def backward(ctx, grad):
        h, weight, dlogits, target = ctx.saved_tensors
        dlogits[torch.arange(len(target), device=target.device), target] -= 1.0  # softmax - onehot, in place
        dlogits = dlogits.mul_(grad[:, None]).to(ctx.dt)
        grad_h = (dlogits @ weight.to(ctx.dt)).to(h.dtype)
        grad_w = (dlogits.t() @ h.to(ctx.dt)).to(weight.dtype)
        return grad_h, grad_w, dlogits.sum(0).to(weight.dtype), None, None


def head_cross_entropy(model, h, target):
    return HeadCrossEntropy.apply(h, model.lm_head.weight, model.lm_head.bias, target, model.config.mask_id)


def diffusion_loss(model, x0, x_t, t, block_size, per_token=False):
    """The block-diffusion NELBO per token (BD3-LM eq. L_BD with the SUBS parameterization), vectorized.

    Every block b is denoised given the clean blocks < b. Instead of L/B forward passes, run once over
    [x_t ; x_0] (B, 2L) with block_diff_mask: noisy block b attends to itself and to clean blocks < b; the
    clean copy is block-causal so its keys/values equal a KV cache of the clean prefix. Both copies use
    rotary positions 0..L-1. For block_size = L there is no clean prefix to read: run x_t alone with full
    attention (MDLM, half the cost, same objective).

    SUBS: unmasked positions are copied (log p = 0, no loss), so the head runs on masked x_t positions
    only. With alpha_t = 1 - t the NELBO weight -alpha'_t / (1 - alpha_t) is 1/t:
        loss = sum over masked positions of CE / t, divided by the number of tokens B*L.
    per_token=True returns the (B, L) terms of that sum instead (zero where unmasked), as the noise-interval
    search needs them per block."""
    B, L = x0.shape
    pos = torch.arange(L, device=x0.device)
    if block_size == L:
        h = model.hidden(x_t, pos)  # (B, L, C)
    elif model.flex:  # the same mask as a FlexAttention BlockMask (CUDA training and NELBO evaluation)
        mask = flex_block_mask(L, block_size, str(x0.device))
        h = model.hidden(torch.cat([x_t, x0], dim=1), torch.cat([pos, pos]), attn_mask=mask)[:, :L]
    else:
        mask = block_diff_mask(L, block_size, x0.device)
        h = model.hidden(torch.cat([x_t, x0], dim=1), torch.cat([pos, pos]), attn_mask=mask, n_out=L)  # (B, L, C)
    masked = x_t == model.config.mask_id
    ce = head_cross_entropy(model, h[masked], x0[masked])  # (N,), N masked positions
    if per_token:
        return torch.zeros_like(t, dtype=ce.dtype).masked_scatter(masked, ce / t[masked])  # (B, L)
    return (ce / t[masked]).sum() / (B * L)


def ar_loss(model, idx):
    """Next-token cross-entropy with a causal mask (the AR baseline; also our own perplexity judge)."""
    B, T = idx.shape
    h = model.hidden(idx[:, :-1], torch.arange(T - 1, device=idx.device), is_causal=True)
    return head_cross_entropy(model, h.flatten(0, 1), idx[:, 1:].flatten()).mean()


# -----------------------------------------------------------------------------
# samplers

class KVCache:
    """Keys and values of the clean prefix for every layer, (n_layer, B, nh, L, hs), filled up to n.
    A block's forward writes its keys/values at [n, n + T) and attends to [0, n + T); only a forward
    over the *clean* block is followed by advance(), so the slot holds exactly what the clean copy
    x_0 holds in training (block-causal attention, M_BC)."""

    def __init__(self, n_layer, L):
        self.shape = (n_layer, L)
        self.k = self.v = None
        self.n = 0

    def put(self, layer, k, v):
        if self.k is None:  # allocate on first use, in the compute dtype (bf16 under autocast)
            B, nh, T, hs = k.shape
            n_layer, L = self.shape
            self.k = k.new_zeros(n_layer, B, nh, L, hs)
            self.v = v.new_zeros(n_layer, B, nh, L, hs)
        T = k.size(2)
        self.k[layer, :, :, self.n:self.n + T] = k
        self.v[layer, :, :, self.n:self.n + T] = v
        return self.k[layer, :, :, :self.n + T], self.v[layer, :, :, :self.n + T]

    def advance(self, T):
        self.n += T


class RefineCache(KVCache):
    """Keys and values of all L positions, for a global stage that refreshes them only every r steps. A full
    forward (idx None) writes all of them; a forward over the positions idx (B, T) alone rewrites those and
    attends to all L: the other positions' keys and values are then as old as the last full forward (dKV-Cache,
    dLLM-Cache). Exact only when every step is a full forward (r = 1)."""
    idx = None

    def put(self, layer, k, v):
        if self.idx is None:
            return super().put(layer, k, v)  # n stays 0: the whole sequence
        i = self.idx[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))  # (B, nh, T, hs)
        self.k[layer].scatter_(2, i, k)
        self.v[layer].scatter_(2, i, v)
        return self.k[layer], self.v[layer]


def inverse_cdf(p, u):
    """Index drawn from each row of unnormalized weights p (N, K) with the uniforms u (N,)."""
    csum = p.cumsum(-1)
    return torch.searchsorted(csum, (u * csum[:, -1])[:, None]).clamp(max=p.size(-1) - 1).squeeze(-1)


def sample_tokens(logits, u, top_p=0.9, temperature=1.0, nucleus='standard'):
    """Draw one token per row of logits (N, V) by inverse CDF with the given uniforms u (N,), from the
    nucleus: nucleus='standard' keeps the smallest set of tokens whose mass reaches top_p (the token that
    crosses top_p is kept; Holtzman et al.); 'bd3lm' keeps the tokens whose cumulative mass, their own
    included, is <= top_p, and always the most likely one (BD3-LM's _nucleus_sample drops the crossing token).
    Returns tokens (N,) and their probability under the full softmax at this temperature, *before*
    nucleus truncation: the snapshot confidence measures the model's belief, not the sampler's."""
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, F.softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    probs = F.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)  # (N, V)
    if top_p >= 1.0:  # no truncation: inverse CDF in vocabulary order
        tok = inverse_cdf(probs, u)
        return tok, probs.gather(-1, tok[:, None]).squeeze(-1)
    # a trained model's nucleus is a few dozen tokens: find it with topk, and fall back to a longer topk or
    # the full 50K-way sort (30x slower) only for the rows whose nucleus is longer
    tok = torch.empty(len(probs), dtype=torch.long, device=probs.device)
    rows = torch.arange(len(probs), device=probs.device)
    for k in (64, 1024, probs.size(-1)):
        p = probs if len(rows) == len(probs) else probs[rows]
        sp, si = p.topk(min(k, probs.size(-1)), dim=-1)  # (n, k), sorted descending
        ok = (sp.sum(-1) >= top_p) | (k >= probs.size(-1))
        sp, si = sp[ok], si[ok]
        if nucleus == 'bd3lm':  # keep a token if the mass up to and including it is <= top_p, and the first
            keep = sp.cumsum(-1) <= top_p
            keep[:, 0] = True
        else:  # keep a token if the mass before it is below top_p
            keep = (sp.cumsum(-1) - sp) < top_p
        sp = sp * keep
        tok[rows[ok]] = si.gather(-1, inverse_cdf(sp, u[rows[ok]])[:, None]).squeeze(-1)
        rows = rows[~ok]
        if len(rows) == 0:
            break
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1)


def reveal_counts(m, steps, s):
    """How many positions each row reveals at step s of a block: m (B,) masked at the start of the block.
    steps=None: one per step (BD3-LM's first-hitting sampler, B steps per block); else m spread evenly
    over `steps` steps (several tokens per forward pass: fewer passes, lower quality)."""
    if steps is None:
        return (s < m).long()
    return (m * (s + 1)) // steps - (m * s) // steps


@torch.no_grad()
def denoise(model, x, conf, block_size, gens, steps=None, top_p=0.9, temperature=1.0, use_cache=True, nucleus='standard',
            order='random', threshold=None, refresh=1):
    """Fill every MASK in x (B, L) block by block, left to right; x and conf (B, L) are updated in place.

    block_size < L: semi-autoregressive. Clean blocks live in a KV cache; the current block runs alone
    against it; once the block is complete, one forward over the clean block writes its keys/values.
    block_size = L: global diffusion, one block with full bidirectional attention.
    Which still-masked positions a step reveals:
      order='random': random ones; the head runs on those positions only (BD3-LM's first-hitting sampler
        draws a token everywhere and keeps one: the other draws would be thrown away).
      order='confidence': a token is drawn at every masked position of the block and the most probable
        draws are kept (LLaDA's low-confidence remasking); the head runs on all masked positions.
    and how many: steps=None one per step (B steps per block); steps=S the block's masked positions spread
    evenly over S steps; threshold=tau every draw with probability >= tau and at least the most probable one
    (Fast-dLLM's parallel decoding; implies order='confidence', and the model's confidence sets the steps).
    refresh=r > 1 (global stages with use_cache): the positions this stage does not denoise get their keys and
    values recomputed only every r steps (r = 0: only at the stage's first step); in between only the stage's
    masked positions run through the trunk (RefineCache; an approximation, r = 1 is exact and runs the whole
    sequence every step).
    gens: one torch.Generator per row, so a row's samples do not depend on the rest of the batch.
    use_cache=False runs the whole prefix each step with the block-causal mask (the slow reference).
    Returns per-row counts (B,) as a batch-1 sampler would make them: nfe (denoising forwards in which the row
    reveals a token), cache_passes, token_forwards (tokens through the trunk in those forwards)."""
    B, L = x.shape
    mask_id = model.config.mask_id
    cache = KVCache(model.config.n_layer, L) if use_cache and block_size < L else None
    weight_t = model.lm_head.weight.t().contiguous()  # (C, V), see DiD.logits
    by_conf = order == 'confidence' or threshold is not None
    stats = {k: torch.zeros(B, dtype=torch.long) for k in ('nfe', 'cache_passes', 'token_forwards')}
    active, n_fwd = None, 0  # the stage's masked positions (B, M), when a global stage reuses the others' keys/values
    if block_size == L and use_cache and refresh != 1:
        n = (x == mask_id).sum(1)
        if (n == n[0]).all() and 0 < n[0] < L:  # every row has as many (a refine stage): one (B, M) index
            active = (x == mask_id).nonzero()[:, 1].view(B, -1)
            rcache = RefineCache(model.config.n_layer, L)
    for start in range(0, L, block_size):
        end = start + block_size
        m = (x[:, start:end] == mask_id).sum(1)  # (B,) masked positions per row in this block
        n_steps = int(m.max()) if steps is None or threshold is not None else steps
        s = 0
        while s < n_steps:
            still = x[:, start:end] == mask_id
            k = reveal_counts(m, steps, s) if threshold is None else still.any(1).long()  # (B,) tokens this step
            if threshold is not None and not k.any():
                break
            s += 1
            if not k.any():
                continue
            u = torch.zeros(B, 2, block_size)  # per-row uniforms: position choice, token choice
            for i in k.nonzero().flatten().tolist():  # only rows that reveal draw, so rows never interact
                u[i] = torch.rand(2, block_size, generator=gens[i])
            u = u.to(x.device)
            n_tok = block_size if cache is not None or block_size == L else end
            n_fwd += 1
            full = n_fwd == 1 or (refresh > 0 and (n_fwd - 1) % refresh == 0)  # refresh 0: the stage's first forward only
            if active is not None and not full:  # the stage's positions alone, against cached keys/values
                rcache.idx, n_tok = active, active.size(1)
                ha = model.hidden(x.gather(1, active), active, cache=rcache)  # (B, M, C)
                h = ha.new_zeros(B, L, ha.size(-1)).scatter_(1, active[..., None].expand_as(ha), ha)
            elif active is not None:  # a full forward, which refreshes every position's keys and values
                rcache.idx = None
                h = model.hidden(x, torch.arange(L, device=x.device), cache=rcache)
            elif cache is not None:
                h = model.hidden(x[:, start:end], torch.arange(start, end, device=x.device), cache=cache)
            elif block_size == L:
                h = model.hidden(x, torch.arange(L, device=x.device))
            else:
                mask = block_causal_mask(L, block_size, x.device)[:end, :end]
                h = model.hidden(x[:, :end], torch.arange(end, device=x.device), attn_mask=mask)[:, start:]
            if by_conf:  # draw everywhere still masked, keep the k most probable draws
                cand = still & (k > 0)[:, None].to(x.device)
                tok_c, p_c = sample_tokens(model.logits(h[cand], weight_t), u[:, 1][cand], top_p, temperature, nucleus)
                tok = torch.zeros_like(still, dtype=torch.long).masked_scatter(cand, tok_c)
                p = torch.full(still.shape, -1.0, device=x.device, dtype=p_c.dtype).masked_scatter(cand, p_c)
                if threshold is not None:
                    k = torch.where(k > 0, (p >= threshold).sum(1).clamp(min=1).cpu(), 0)
                rank = p.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                reveal = cand & (rank < k[:, None].to(x.device))
                tok, p = tok[reveal], p[reveal]
            else:
                score = torch.where(still, u[:, 0], -1.0)
                rank = score.argsort(dim=1, descending=True).argsort(dim=1)
                reveal = still & (rank < k[:, None].to(x.device))  # k random masked positions per row
                tok, p = sample_tokens(model.logits(h[reveal], weight_t), u[:, 1][reveal], top_p, temperature, nucleus)
            x[:, start:end][reveal] = tok
            conf[:, start:end][reveal] = p.to(conf.dtype)
            stats['nfe'] += (k > 0).cpu()
            stats['token_forwards'] += (k > 0).cpu() * n_tok
        if cache is not None and end < L:  # the last block's keys/values would never be read
            model.hidden(x[:, start:end], torch.arange(start, end, device=x.device), cache=cache)
            cache.advance(block_size)
            stats['cache_passes'] += 1
            stats['token_forwards'] += block_size
    return stats


@torch.no_grad()
def posthoc_confidence(model, x):
    """The paper's baseline score: one full-attention forward over the finished sequence, and the
    probability each present token gets there. Note that a SUBS-trained denoiser is never trained at
    unmasked positions (they are copied), which is one reason this score cannot find the draft's errors."""
    h = model.hidden(x, torch.arange(x.size(1), device=x.device))
    return F.softmax(model.logits(h), dim=-1).gather(-1, x[..., None]).squeeze(-1)  # (B, L)


STAGE_OPTIONS = dict(steps=None, order='random', threshold=None, refresh=1)  # denoise's schedule, per stage


def stage_options(stage):
    """(block_size, gamma[, steps or {option: value}]) -> block_size, gamma, and all of denoise's options."""
    bs, gamma, *rest = stage
    opts = rest[0] if rest and isinstance(rest[0], dict) else {'steps': rest[0] if rest else None}
    return bs, gamma, {**STAGE_OPTIONS, **opts}


def check_sampling(stages, L, prompt_len, remask, top_p, temperature, nucleus):
    """One ValueError per bad sampling setting, before any work."""
    if not stages or stages[0][1] != 1.0:
        raise ValueError(f"the first stage is the draft and must have gamma = 1 (all masked), got {stages}")
    for stage in stages:
        bs, gamma, o = stage_options(stage)
        if bs <= 0 or L % bs:
            raise ValueError(f"block size {bs} does not divide the sequence length {L}; use a divisor of {L}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"remask ratio gamma={gamma} is outside [0, 1]")
        if set(o) - set(STAGE_OPTIONS):
            raise ValueError(f"unknown stage option {sorted(set(o) - set(STAGE_OPTIONS))}; use {sorted(STAGE_OPTIONS)}")
        if o['steps'] is not None and o['steps'] < 1:
            raise ValueError(f"steps={o['steps']} per block: every block needs at least one denoising step")
        if o['order'] not in ('random', 'confidence'):
            raise ValueError(f"unknown reveal order {o['order']!r}; use random or confidence")
        if o['threshold'] is not None and not 0 < o['threshold'] <= 1:
            raise ValueError(f"confidence threshold {o['threshold']} must be in (0, 1]")
        if o['refresh'] < 0:
            raise ValueError(f"refresh={o['refresh']}: keys and values are refreshed every r >= 1 steps (0: never)")
    if not 0 < prompt_len < L:
        raise ValueError(f"prompt of {prompt_len} tokens must be between 1 and {L - 1} tokens (seq_len {L})")
    if remask not in ('snapshot', 'posthoc', 'random'):
        raise ValueError(f"unknown remask strategy {remask!r}; use snapshot, posthoc or random")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy)")
    if nucleus not in ('standard', 'bd3lm'):
        raise ValueError(f"unknown nucleus rule {nucleus!r}; use standard or bd3lm")


@torch.no_grad()
def generate(model, prompt, seeds, stages=((4, 1.0), (1024, 0.25)), remask='snapshot', top_p=0.9,
             temperature=1.0, use_cache=True, nucleus='standard'):
    """Diffusion in Diffusion: K-stage generation of len(seeds) sequences of seq_len tokens.

    prompt: list of token ids at positions 0.. (default in sample.py: [<|endoftext|>], as BD3-LM).
    stages: (block_size, gamma), (block_size, gamma, steps) or (block_size, gamma, {option: value}) per stage,
    the options being denoise's schedule (steps, order, threshold, refresh). Stage 1 (gamma = 1) drafts from an
    all-MASK sequence; each later stage remasks floor(gamma * n) of the n generated positions per sequence,
    chosen by `remask`, and denoises them again with its block size (DiD's headline setting: draft B=4, refine B=L).
      snapshot: lowest snapshot confidence (probability of the token when it was committed; DiD's method)
      posthoc:  lowest probability under one forward pass over the finished sequence (the paper's baseline)
      random:   uniformly random positions
    seeds: one seed per sequence; sequence i is the same whatever batch it runs in.
    Returns a dict: tokens (B, L), conf (B, L) snapshot confidences (1.0 on the prompt), and per stage:
    remasked (B, L) bool, history (B, L) tokens after the stage, stats (forward-pass counts)."""
    L, mask_id = model.config.seq_len, model.config.mask_id
    P = len(prompt)
    check_sampling(stages, L, P, remask, top_p, temperature, nucleus)
    device = model.lm_head.weight.device
    B = len(seeds)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.full((B, L), mask_id, dtype=torch.long, device=device)
    x[:, :P] = torch.tensor(prompt, dtype=torch.long, device=device)
    conf = torch.ones(B, L, device=device, dtype=torch.promote_types(model.lm_head.weight.dtype, torch.float32))
    remasked, history, stats = [], [], []
    for k, stage in enumerate(stages):
        bs, gamma, opts = stage_options(stage)
        if k == 0:
            sel = x == mask_id
        else:
            r = math.floor(gamma * (L - P))
            if remask == 'snapshot':
                score = conf.clone()
            elif remask == 'posthoc':
                score = posthoc_confidence(model, x).float()
            else:
                score = torch.stack([torch.rand(L, generator=g) for g in gens]).to(device)
            score[:, :P] = float('inf')  # prompt tokens are never remasked
            idx = score.argsort(dim=1, stable=True)[:, :r]  # (B, r) lowest scores
            sel = torch.zeros_like(x, dtype=torch.bool).scatter_(1, idx, True)
            x[sel] = mask_id
        remasked.append(sel)
        stats.append(denoise(model, x, conf, bs, gens, top_p=top_p, temperature=temperature, use_cache=use_cache,
                             nucleus=nucleus, **opts))
        history.append(x.clone())
    return dict(tokens=x, conf=conf, remasked=remasked, history=history, stats=stats)


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def nelbo(model, batches, block_size, seed=1337, ctx=None, bos=False):
    """Validation NELBO per token (nats) at any block size: unclipped t in [1e-3, 1], no resampling, one
    seeded noise draw per batch. exp(nelbo) upper-bounds the perplexity. block_size=0 gives the exact AR
    cross-entropy of a causal model instead; block_size=1 takes t = 1 (every token masked): a one-token block
    is either masked or not, so its NELBO is the same for every t and t = 1 gives it without noise (BD3-LM's
    eval_nll). bos=True: position 0 holds the BOS, is never masked and not counted (BD3-LM's ignore_bos), so the
    average runs over the L - 1 other positions."""
    ctx = ctx or contextlib.nullcontext()
    total, count = 0.0, 0
    for i, x0 in enumerate(batches):
        with ctx:
            if block_size == 0:
                loss = ar_loss(model, x0)
            else:
                g = torch.Generator(device=x0.device).manual_seed(seed + i)
                eps_min = 1.0 if block_size == 1 else 1e-3  # B=1: the NELBO does not depend on t; t = 1 makes it exact
                x_t, t = add_noise(x0, block_size, model.config.mask_id, eps_min, generator=g, keep_first=bos)
                L = x0.size(1)
                loss = diffusion_loss(model, x0, x_t, t, block_size) * (L / (L - 1) if bos else 1)
        total, count = total + loss.item(), count + 1
    return total / count


def search_intervals(widths=(0.5, 0.6, 0.7, 0.8, 0.9), delta=0.05, eps=1e-3):
    """BD3-LM's candidate noise intervals: the unclipped [eps, 1], and [s, s + w] for every width w and every
    start s = 0, delta, ... <= 1 - w (s clamped to >= eps): 36 intervals with the default widths."""
    out = [(eps, 1.0)]
    for w in widths:
        for i in range(round((1 - w) / delta) + 1):
            out.append((max(round(i * delta, 6), eps), round(i * delta + w, 6)))
    return out


@torch.no_grad()
def clipped_schedule_search(block_losses, candidates):
    """BD3-LM's data-driven clipped schedule (its var_min search): block_losses((eps_min, eps_max)) returns a
    list of per-block mean losses, one (B, L/block_size) tensor per validation batch, with t drawn from that
    interval. The interval whose losses vary least (summed over batches, the variance across the blocks of
    a batch) gives the lowest-variance gradient estimate. Returns the best interval and every score."""
    scores = {c: sum(b.double().var().item() for b in block_losses(c)) for c in candidates}
    return min(scores, key=scores.get), scores


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, or SystemExit with the fix when its files cannot be fetched (no network)."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        raise SystemExit(f"error: tiktoken cannot load the GPT-2 BPE files ({type(e).__name__}; no network?): set "
                         f"TIKTOKEN_CACHE_DIR to a folder holding them (in our workspace: ../shared/data/gpt2_bpe/"
                         f"tiktoken_cache), or use characters (prepare_owt.py --tokenizer=char)")


class Tokenizer:
    """GPT-2 BPE (tiktoken) or characters, as written by prepare_owt.py into meta.json. eot is the document
    separator <|endoftext|> (50256 for GPT-2), also the default one-token prompt."""

    def __init__(self, meta):
        self.kind, self.eot, self.vocab_size = meta['tokenizer'], meta['eot'], meta['vocab_size']
        if self.kind == 'gpt2':
            self.enc = gpt2_encoding()
        else:
            self.chars = meta['chars']
            self.stoi = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text):
        """Plain text -> ids; a literal "<|endoftext|>" in the text becomes the eot token."""
        pieces = [self.enc.encode_ordinary(p) if self.kind == 'gpt2' else [self.stoi[c] for c in p]
                  for p in text.split('<|endoftext|>')]
        return sum((([self.eot] if i else []) + p for i, p in enumerate(pieces)), [])

    def decode(self, ids):
        if self.kind == 'gpt2':
            return self.enc.decode(list(ids))
        return ''.join(self.chars[i] if i < len(self.chars) else '<|endoftext|>' for i in ids)


def check_device(device, dtype):
    """One line, and the fix, for a device or dtype this machine cannot run (train.py, sample.py, bench.py)."""
    if not re.fullmatch(r'cpu|mps|cuda(:\d+)?', device):
        raise SystemExit(f"error: --device={device!r}: use cpu, cuda, cuda:N or mps")
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f"error: --device={device} but this PyTorch sees no CUDA GPU: use --device=cpu, or install "
                         f"a CUDA build of torch")
    if device.startswith('cuda:') and int(device[5:]) >= torch.cuda.device_count():
        raise SystemExit(f"error: --device={device} but there are {torch.cuda.device_count()} GPUs")
    if device == 'mps' and not torch.backends.mps.is_available():
        raise SystemExit("error: --device=mps but MPS is not available here: use --device=cpu")
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise SystemExit(f"error: --dtype={dtype!r}: use float32, bfloat16 or float16")


ALIASES = {'block_size': 'seq_len', 'n_ctx': 'seq_len', 'context_length': 'seq_len', 'lr': 'learning_rate',
           'iters': 'max_iters', 'num_iters': 'max_iters', 'gamma': 'stages', 'steps_per_block': 'steps'}


def configure(cfg, argv, quiet=False):
    """The poor man's configurator (nanoGPT): argv holds config files (python, run in cfg) and --key=value
    overrides of the script's config block cfg (its globals), type-checked. Returns the config keys."""
    keys = [k for k, v in cfg.items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, dict, list, tuple, type(None)))]
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise SystemExit(f"error: config file {arg} not found (config files are in config/; "
                                 f"overrides are written --key=value)")
            if not quiet:
                print(f"overriding config with {arg}")
            try:
                exec(open(arg).read(), cfg)
            except Exception as e:
                raise SystemExit(f"error: config file {arg} failed: {type(e).__name__}: {e}")
            continue
        key, eq, val = arg[2:].partition('=')
        if not eq and isinstance(cfg.get(key), bool):
            val = 'True'  # a bare --flag switches a boolean on
        if key not in keys:
            near = ALIASES.get(key) if ALIASES.get(key) in keys else next(iter(difflib.get_close_matches(key, keys, 1)), None)
            hint = f"; did you mean --{near}?" if near else ""
            raise SystemExit(f"error: unknown config key --{key}{hint} (the keys are in the config block at the top of the script)")
        try:
            val = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            pass  # a plain string
        old = cfg[key]
        bad_bool = isinstance(val, bool) != isinstance(old, bool)  # True is an int to Python, not to us
        if old is not None and (bad_bool or not isinstance(val, type(old)) and not (isinstance(val, int) and isinstance(old, float))):
            raise SystemExit(f"error: --{key}={val!r} should be a {type(old).__name__}, like the default {old!r}")
        cfg[key] = val
    return keys


# -----------------------------------------------------------------------------
# loading checkpoints: ours (train.py's ckpt.pt) and BD3-LM's (kuleshov-group/bd3lm-owt-*)

def load_checkpoint(path, device='cpu'):
    """train.py's ckpt.pt, or SystemExit with one line saying what is wrong with the file."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found: train first (python train.py ...) or point --out_dir at a run")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise SystemExit(f"error: {path} is not a readable checkpoint ({type(e).__name__}); it may be truncated "
                         f"or from another program: retrain, or restore it from a copy")
    need = {'model', 'ema', 'model_args', 'config', 'iter_num'}
    if not isinstance(ckpt, dict) or not need <= set(ckpt):
        raise SystemExit(f"error: {path} is not a train.py checkpoint (it lacks {sorted(need - set(ckpt) if isinstance(ckpt, dict) else need)})")
    return ckpt


@torch.no_grad()
def from_bd3lm(sd, seq_len=1024, dropout=0.0, n_head=None):
    """Build a DiD from a BD3-LM / MDLM DiT state dict (keys 'backbone.*' as in its HF model, or without prefix).

    BD3-LM keeps DiT's adaLN but feeds it time 0 (time_conditioning=False), so c = silu(sigma_map(0)) is a
    constant and every shift, scale and gate is a constant vector. Fold them away:
      modulate(LN_w(x), shift, scale) = LN(x) * w * (1 + scale) + shift  -> a LayerNorm with weight and bias
      x + gate * (W y + b)                                              -> our residual gates gate_1, gate_2
    n_head: the checkpoint config's n_heads (the state dict does not say; None: head dim 64, as small/medium).
    Returns the model and the checkpoint's clipped noise interval (sampling_eps_min, sampling_eps_max), read
    from its float32 buffers and rounded to 6 decimals (0.0010000000474974513 is the unclipped 1e-3)."""
    sd = {k.removeprefix('backbone.'): v.double() for k, v in sd.items()}  # fold in float64, store in fp32
    V, C = sd['vocab_embed.embedding'].shape
    n_layer = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    n_head = n_head or C // 64
    model = DiD(DiDConfig(seq_len=seq_len, vocab_size=V, n_layer=n_layer, n_head=n_head, n_embd=C, dropout=dropout))
    # the constant conditioning vector: sinusoidal embedding of t = 0 is [cos 0 ..., sin 0 ...] = [1..., 0...]
    w0 = sd['sigma_map.mlp.0.weight']
    emb = torch.cat([torch.ones(w0.shape[1] // 2), torch.zeros(w0.shape[1] - w0.shape[1] // 2)]).double()
    c = F.silu(F.linear(F.silu(F.linear(emb, w0, sd['sigma_map.mlp.0.bias'])),
                        sd['sigma_map.mlp.2.weight'], sd['sigma_map.mlp.2.bias']))
    model.wte.weight[:V] = sd['vocab_embed.embedding']
    for i, block in enumerate(model.h):
        p = f'blocks.{i}.'
        mod = F.linear(c, sd[p + 'adaLN_modulation.weight'], sd[p + 'adaLN_modulation.bias'])
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6)
        block.ln_1.weight.copy_(sd[p + 'norm1.weight'] * (1 + scale1))
        block.ln_1.bias.copy_(shift1)
        block.attn.c_attn.weight.copy_(sd[p + 'attn_qkv.weight'])
        block.attn.c_proj.weight.copy_(sd[p + 'attn_out.weight'])
        block.gate_1.copy_(gate1)
        block.ln_2.weight.copy_(sd[p + 'norm2.weight'] * (1 + scale2))
        block.ln_2.bias.copy_(shift2)
        block.mlp.c_fc.weight.copy_(sd[p + 'mlp.0.weight'])
        block.mlp.c_fc.bias.copy_(sd[p + 'mlp.0.bias'])
        block.mlp.c_proj.weight.copy_(sd[p + 'mlp.2.weight'])
        block.mlp.c_proj.bias.copy_(sd[p + 'mlp.2.bias'])
        block.gate_2.copy_(gate2)
    shift, scale = F.linear(c, sd['output_layer.adaLN_modulation.weight'], sd['output_layer.adaLN_modulation.bias']).chunk(2)
    model.ln_f.weight.copy_(sd['output_layer.norm_final.weight'] * (1 + scale))
    model.ln_f.bias.copy_(shift)
    model.lm_head.weight.zero_()
    model.lm_head.bias.zero_()
    model.lm_head.weight[:V] = sd['output_layer.linear.weight']
    model.lm_head.bias[:V] = sd['output_layer.linear.bias']
    eps = tuple(round(float(sd.get(k, torch.tensor(d))), 6) for k, d in (('sampling_eps_min', 1e-3), ('sampling_eps_max', 1.0)))
    return model, eps


def load_bd3lm(name, seq_len=1024, dropout=0.0):
    """name: a Hugging Face repo id (kuleshov-group/bd3lm-owt-block_size4, ...) or a local directory holding
    its model.safetensors or pytorch_model.bin, and its config.json (n_heads, block_size). Downloading needs
    the optional huggingface_hub package. Returns the model and {block_size: noise interval}: the interval
    the checkpoint's training searched, for the one block size it was searched for (empty when unclipped or
    when config.json does not say the block size)."""
    path = name
    if not os.path.isdir(name):
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise SystemExit(f"error: downloading {name} needs huggingface_hub: pip install huggingface_hub "
                             f"(or download the repo yourself and pass its local directory)")
        path = snapshot_download(name, allow_patterns=['*.safetensors', '*.bin', '*.json'])
    if os.path.exists(os.path.join(path, 'model.safetensors')):
        from safetensors.torch import load_file
        sd = load_file(os.path.join(path, 'model.safetensors'))
    elif os.path.exists(os.path.join(path, 'pytorch_model.bin')):
        sd = torch.load(os.path.join(path, 'pytorch_model.bin'), map_location='cpu', weights_only=True)
    else:
        raise SystemExit(f"error: no model.safetensors or pytorch_model.bin in {path}")
    cfg_path = os.path.join(path, 'config.json')
    cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    model, eps = from_bd3lm(sd, seq_len, dropout, cfg.get('n_heads'))
    block = cfg.get('block_size')
    return model, ({block: eps} if block and eps != (1e-3, 1.0) else {})

# -----------------------------------------------------------------------------
# generative perplexity (the BD3-LM protocol) and entropy

@torch.no_grad()
def sample_nll(logits_fn, ids, eos, ctx_len, stride=None):
    """Summed NLL and count of one sample's scored tokens under a causal judge: logits_fn(ids (T,)) -> (T, V).
    The first token is context only, never scored; targets equal to eos are excluded (BD3-LM). A sample longer
    than the judge's context is scored with a sliding window of ctx_len and stride ctx_len // 2: the first
    window scores all its tokens, each later one only the tokens no earlier window scored."""
    stride = stride or ctx_len // 2
    T = len(ids)
    nll, count, scored_to = 0.0, 0, 1
    for begin in range(0, T, stride):
        end = min(begin + ctx_len, T)
        logp = F.log_softmax(logits_fn(ids[begin:end]).double(), dim=-1)  # (end - begin, V)
        tgt = ids[scored_to:end]
        lp = logp[scored_to - 1 - begin:end - 1 - begin].gather(-1, tgt[:, None]).squeeze(-1)
        keep = tgt != eos
        nll, count = nll - lp[keep].sum().item(), count + int(keep.sum())
        scored_to = end
        if end == T:
            break
    return nll, count


def gen_ppl(logits_fn, samples, eos, ctx_len):
    """Generative perplexity of samples (lists of judge token ids): the mean of the per-sample perplexities
    (what the BD3-LM and DiD tables report), their standard deviation, and the token-weighted perplexity.
    A sample with no scored token (every target EOS) has no perplexity (0/0) and is left out, as BD3-LM's
    NaN-skipping mean leaves it out; the list of per-sample values keeps it as NaN."""
    per = [sample_nll(logits_fn, torch.as_tensor(s), eos, ctx_len) for s in samples]
    ppls = torch.tensor([math.exp(n / c) if c else float('nan') for n, c in per], dtype=torch.float64)
    ok = ppls[~ppls.isnan()]
    weighted = math.exp(sum(n for n, _ in per) / max(sum(c for _, c in per), 1))
    return (ok.mean().item() if len(ok) else float('nan'), ok.std().item() if len(ok) > 1 else 0.0, weighted,
            ppls.tolist())


def unigram_entropy(ids):
    """Entropy (nats) of the token frequencies within one sample; real OWT text is about 5.6, repetition lower."""
    _, counts = torch.unique(torch.as_tensor(ids), return_counts=True)
    p = counts.double() / counts.sum()
    return -(p * p.log()).sum().item()


def words(text):
    """The words of a text for the real-word rate: lowercased runs of letters (a sample's <|endoftext|> is not one)."""
    return re.findall(r'[a-z]+', text.replace('<|endoftext|>', ' ').lower())


def real_word_rate(text, vocab):
    """Share of text's words that occur in vocab (a set of words, e.g. words(training text)); NaN if none.
    Real Tiny Shakespeare scores about 0.98 against its own training split; character soup far less."""
    w = words(text)
    return sum(x in vocab for x in w) / len(w) if w else float('nan')


def clean_up_tokenization(text):
    """The whitespace clean-up of Hugging Face's batch_decode (transformers <= 4.44 applied it by default,
    clean_up_tokenization_spaces=True; BD3-LM's paper code pinned 4.38.2): our GPT-2 samples are decoded
    with tiktoken, which does not do it, so the gpt2-large protocol applies it before re-encoding."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class Judge:
    """A causal LM that scores samples: our own AR checkpoint (train.py --causal=True), or a Hugging Face causal
    LM: 'gpt2-large' (the paper's judge) or a local folder holding one (through the optional transformers
    package). Both re-encode the decoded text; score() follows BD3-LM's Gen PPL protocol."""

    def __init__(self, name, device='cpu'):
        self.device, self.name = device, name
        self.hf = name.startswith('gpt2') or os.path.isfile(os.path.join(name, 'config.json'))
        if self.hf:
            try:
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError:
                raise SystemExit(f"error: --judge={name} needs transformers: pip install transformers "
                                 f"(or pass --judge=path/to/ar_ckpt.pt, an AR model trained with --causal=True)")
            try:
                self.tok = AutoTokenizer.from_pretrained(name)
                self.model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()
            except OSError as e:
                raise SystemExit(f"error: cannot load the judge {name} ({str(e).splitlines()[0][:150]}): it needs a "
                                 f"network the first time, or pass a local folder or --judge=path/to/ar_ckpt.pt")
            self.eos, self.ctx_len = self.tok.eos_token_id, self.model.config.n_positions
            self.encode = lambda text: self.tok(text, add_special_tokens=False)['input_ids']
            self.logits = lambda ids: self.model(ids[None].to(device)).logits[0]
        else:
            ckpt = load_checkpoint(name, device)
            if not ckpt['config'].get('causal'):
                raise SystemExit(f"error: judge {name} is not a causal model: train one with train.py --causal=True")
            self.model = DiD(DiDConfig(**ckpt['model_args']))
            self.model.load_state_dict(ckpt['ema'])
            self.model.to(device).eval()
            tok = Tokenizer(ckpt['meta'])
            self.eos, self.ctx_len, self.encode = tok.eot, self.model.config.seq_len, tok.encode
            self.logits = lambda ids: self.model.logits(self.model.hidden(
                ids[None].to(device), torch.arange(len(ids), device=device), is_causal=True))[0, :, :tok.vocab_size]

    @torch.no_grad()
    def score(self, texts, max_len):
        """BD3-LM's protocol on decoded samples: clean up the whitespace as its batch_decode did (Hugging Face
        judges), re-encode with the judge's tokenizer, truncate to max_len tokens (the sampler's L), score.
        Returns gen_ppl's (mean, std, token-weighted, per-sample) and the mean unigram entropy of the ids."""
        ids = [self.encode(clean_up_tokenization(t) if self.hf else t)[:max_len] for t in texts]
        return gen_ppl(self.logits, ids, self.eos, self.ctx_len), sum(map(unigram_entropy, ids)) / len(ids)
