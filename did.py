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

Sections, in the paper's order:
  1. config and model
  2. attention masks
  3. forward noise, the loss, the NELBO and BD3-LM's clipped noise schedule (training)
  4. sampling (inference): draft, remask, refine; first the exact sampler, then its faster schedules
Beyond the paper's fixed length (infilling with the global stage, text of any length) is in beyond.py, the sampler
as compiled static-shape steps (the same tokens) in fast.py, loading checkpoints (ours, BD3-LM's) in load.py,
scoring samples in judge.py, MFU in mfu.py, the scripts' settings in configurator.py.
"""

import contextlib
import math
import sys
from dataclasses import dataclass, replace
from functools import lru_cache, partial, wraps

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

# -----------------------------------------------------------------------------
# 1. config and model

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
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} does not split into n_head={config.n_head} heads")
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


# -----------------------------------------------------------------------------
# 2. attention masks (True = may attend). Built eagerly, once, and cached: under torch.compile they stay outside
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
# 3. forward noise, the loss, the NELBO, the clipped noise schedule

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
        dev = h.device.type
        dt = torch.get_autocast_dtype(dev) if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev) else h.dtype
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
        dlogits.scatter_add_(1, target[:, None], torch.full_like(dlogits[:, :1], -1.0))  # softmax - onehot, in place
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


# -----------------------------------------------------------------------------
# 4. sampling (the paper's section 3): draft with small blocks, KV-cached; remask the tokens the model was least sure
# of when it wrote them; denoise them again with one global block. First the exact sampler, then its faster schedules.

@dataclass(frozen=True)
class Stage:
    """One stage of the sampler: its block size ('L': the whole sequence) and the share gamma of the generated tokens
    it remasks (1.0: the draft, from an all-MASK sequence), then how it reveals them. The paper's: one token per
    forward (steps=None, threshold=None) at a random masked position (order='random', BD3-LM's first-hitting
    sampler), every forward exact (refresh=1). The faster schedules:
      order='confidence'  draw at every masked position of the block, keep the most probable (LLaDA)
      steps=S             the block's masked positions over S forwards, several per forward
      threshold=tau       every draw at least tau probable, at least one per forward (Fast-dLLM; confidence order)
      refresh=r           global stages: the fixed tokens' keys/values recomputed every r forwards, the masked
                          positions alone run in between (dKV-Cache, dLLM-Cache); 0: only at the first forward"""
    block_size: object
    gamma: float = 1.0
    order: str = 'random'
    steps: int = None
    threshold: float = None
    refresh: int = 1


@dataclass(frozen=True)
class Sampling:
    """Everything a sampler is told: the stages, which generated tokens a refine remasks, and how a token is drawn.
      remask: snapshot (the lowest snapshot confidence: the probability of the token when it was committed; DiD),
              posthoc (the lowest probability in one forward over the finished sequence; the paper's baseline)
              or random (uniformly random positions)
      top_p, temperature, nucleus: the token draw (sample_tokens)
    The defaults are the paper's sampler (Sec. 4: BD3-LM's sampler drafting with blocks of 4, then gamma = 0.25)."""
    stages: tuple = (Stage(4), Stage('L', 0.25))
    remask: str = 'snapshot'
    top_p: float = 0.9
    temperature: float = 1.0
    nucleus: str = 'bd3lm'

    def at(self, L):
        """The stages for a sequence of L positions ('L' resolved)."""
        return [replace(s, block_size=L if s.block_size == 'L' else s.block_size) for s in self.stages]

    def draw(self, logits, u):
        return sample_tokens(logits, u, self.top_p, self.temperature, self.nucleus)

    def check(self, L, prompt_len):
        """One ValueError per bad setting, before any work."""
        if not self.stages or not all(isinstance(s, Stage) for s in self.stages):
            raise ValueError(f"stages must be a list of Stage(block_size, gamma, ...), got {self.stages}")
        stages = self.at(L)
        if stages[0].gamma != 1.0:
            raise ValueError(f"the first stage is the draft and must have gamma = 1 (all masked), got {stages[0]}")
        for s in stages:
            if not isinstance(s.block_size, int) or s.block_size <= 0 or L % s.block_size:
                raise ValueError(f"block size {s.block_size} does not divide the sequence length {L}; use a divisor of {L}")
            if not 0.0 <= s.gamma <= 1.0:
                raise ValueError(f"remask ratio gamma={s.gamma} is outside [0, 1]")
            if s.steps is not None and s.steps < 1:
                raise ValueError(f"steps={s.steps} per block: every block needs at least one denoising step")
            if s.order not in ('random', 'confidence'):
                raise ValueError(f"unknown reveal order {s.order!r}; use random or confidence")
            if s.threshold is not None and not 0 < s.threshold <= 1:
                raise ValueError(f"confidence threshold {s.threshold} must be in (0, 1]")
            if s.threshold is not None and (s.steps is not None or s.order != 'confidence'):
                raise ValueError(f"a threshold stage reveals the most probable draws, as many as pass it: it takes "
                                 f"order='confidence' and no steps, got {s}")
            if s.refresh < 0:
                raise ValueError(f"refresh={s.refresh}: keys and values are refreshed every r >= 1 forwards (0: at the first only)")
            if s.refresh != 1 and s.block_size != L:
                raise ValueError(f"refresh={s.refresh} applies to global stages (block size {L}); a block of "
                                 f"{s.block_size} is drafted exactly with its KV cache")
        if not 0 < prompt_len < L:
            raise ValueError(f"prompt of {prompt_len} tokens must be between 1 and {L - 1} tokens (seq_len {L})")
        if self.remask not in ('snapshot', 'posthoc', 'random'):
            raise ValueError(f"unknown remask strategy {self.remask!r}; use snapshot, posthoc or random")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0: greedy)")
        if self.nucleus not in ('standard', 'bd3lm'):
            raise ValueError(f"unknown nucleus rule {self.nucleus!r}; use standard or bd3lm")


PAPER = Sampling()  # the paper's sampler, with which its numbers were made (the README, sample.py --paper, the tests)


@torch.no_grad()
def generate(model, prompt, seeds, sampling=PAPER, use_cache=True, hook=None, steps=None):
    """Diffusion in Diffusion: generate len(seeds) sequences of seq_len tokens in the stages of sampling (the paper's:
    draft with blocks of 4, then remask 25% of the generated tokens and denoise them with one global block).

    prompt: token ids at positions 0.. (sample.py: [<|endoftext|>], as BD3-LM). Stage 1 drafts every other
    position; each later stage remasks floor(gamma * n) of the n generated positions of each row, chosen by
    sampling.remask, and denoises them again with its block size. seeds: one per sequence; sequence i is the same
    whatever batch it runs in. hook(event, stage, data): told of every stage's 'remask' (the positions, (B, L) bool)
    and every forward's 'reveal' (see denoise), for progress bars and replays. Returns a dict: tokens (B, L), conf
    (B, L) snapshot confidences (1 on the prompt), and per stage: remasked (B, L) bool, history (B, L) tokens after
    the stage, stats (forward counts per row). steps: fast.compiled_steps(model), or None (see denoise)."""
    L, mask_id = model.config.seq_len, model.config.mask_id
    sampling.check(L, len(prompt))
    device = model.lm_head.weight.device
    x = torch.full((len(seeds), L), mask_id, dtype=torch.long, device=device)
    x[:, :len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
    return diffuse(model, x, x != mask_id, seeds, sampling, use_cache, hook, steps)


@torch.no_grad()
def generate_ar(model, prompt, seeds, sampling=PAPER):
    """The AR baseline's sampler, for a model trained with causal=True: seq_len tokens left to right, one forward
    per token over the whole prefix (no cache: this is the reference row, not a fast path), each drawn as the
    diffusion samplers draw (sampling's token draw, one generator per seed). Returns tokens (B, L) and conf (B, L)."""
    L, mask_id = model.config.seq_len, model.config.mask_id
    device = model.lm_head.weight.device
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.full((len(seeds), L), mask_id, dtype=torch.long, device=device)
    x[:, :len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
    conf = torch.ones(x.shape, device=device)
    for i in range(len(prompt), L):
        h = model.hidden(x[:, :i], torch.arange(i, device=device), is_causal=True)  # (B, i, C)
        u = torch.stack([torch.rand(1, generator=g) for g in gens]).flatten().to(device)
        x[:, i], conf[:, i] = sampling.draw(model.logits(h[:, -1])[:, :mask_id], u)
    return dict(tokens=x, conf=conf)


def diffuse(model, x, fixed, seeds, sampling, use_cache=True, hook=None, steps=None):
    """The stages of generate on a given x (B, T): the first denoises every MASK, each later one remasks gamma of
    the positions that are not fixed (B, T) and denoises them again. Used by generate and infill."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]  # on the CPU: a row's draws are the same anywhere
    conf = torch.ones(x.shape, device=x.device, dtype=torch.promote_types(model.lm_head.weight.dtype, torch.float32))
    remasked, history, stats = [], [], []
    free = int((~fixed[0]).sum())  # positions each row may remask (every row has as many)
    for k, stage in enumerate(sampling.at(x.size(1))):
        sel = x == model.config.mask_id if k == 0 else lowest(model, x, conf, gens, math.floor(stage.gamma * free), fixed, sampling.remask)
        x[sel] = model.config.mask_id
        remasked.append(sel)
        if hook:
            hook('remask', k, sel)
        stats.append(denoise(model, x, conf, stage, gens, sampling, use_cache, hook and (lambda e, d, k=k: hook(e, k, d)), steps))
        history.append(x.clone())
    return dict(tokens=x, conf=conf, remasked=remasked, history=history, stats=stats)


def lowest(model, x, conf, gens, r, fixed, remask):
    """The r positions of each row with the lowest score, none of them fixed (B, T): the lowest snapshot confidence
    (DiD), the lowest probability in one forward over the sequence (posthoc), or random ones."""
    if remask == 'snapshot':
        score = conf.clone()
    elif remask == 'posthoc':
        score = posthoc_confidence(model, x).to(conf.dtype)
    else:
        score = torch.stack([torch.rand(x.size(1), generator=g) for g in gens]).to(x.device, conf.dtype)
    score[fixed] = float('inf')
    idx = score.argsort(dim=1, stable=True)[:, :r]  # (B, r)
    return torch.zeros_like(x, dtype=torch.bool).scatter_(1, idx, True)


@torch.no_grad()
def posthoc_confidence(model, x):
    """The paper's baseline score: one full-attention forward over the finished sequence, and the probability
    each present token gets there. A SUBS-trained denoiser is never trained at unmasked positions (they are
    copied), which is one reason this score cannot find the draft's errors."""
    h = model.hidden(x, torch.arange(x.size(1), device=x.device))
    return F.softmax(model.logits(h), dim=-1).gather(-1, x[..., None]).squeeze(-1)  # (B, L)


@torch.no_grad()
def denoise(model, x, conf, stage, gens, sampling, use_cache=True, hook=None, steps=None):
    """Fill every MASK of x (B, T) in place, block by block, left to right; conf gets each revealed token's
    probability. Returns per-row counts as a batch-1 sampler would make them: nfe (forwards in which the row
    reveals a token), cache_passes (the draft's KV-cache writes) and token_forwards (tokens through the trunk).
    hook(event, data), if given, hears every forward's 'reveal': (the positions it revealed (B, T) bool, x, conf).
    steps: fast.compiled_steps(model), to run the draft's forwards and reveals and the global stages' trunk as
    compiled static-shape steps, for the same tokens; None: this eager code, the reference."""
    B, T = x.shape
    stats = {k: torch.zeros(B, dtype=torch.long) for k in ('nfe', 'cache_passes', 'token_forwards')}
    if stage.block_size == T:
        forward = GlobalForward(model, x, stage.refresh, use_cache, steps and steps['hidden'])
    elif steps and use_cache:
        forward = steps['blocks'](model, x, stage.block_size)
    else:
        forward = BlockForward(model, x, stage.block_size, use_cache)
    weight_t = model.lm_head.weight.t().contiguous()  # (C, V), see DiD.logits
    for start in range(0, T, stage.block_size):
        if forward.fill_block(x, conf, start, stage, gens, sampling, stats, weight_t, hook):
            continue  # fast.py filled the whole block in one call
        fill(model, x, conf, slice(start, start + stage.block_size), stage, gens, sampling, partial(forward, start), stats,
             weight_t, hook)
        forward.block_done(start, stats)
    return stats


def fill(model, x, conf, blk, stage, gens, sampling, forward, stats=None, weight_t=None, hook=None):
    """Reveal every MASK of x's block blk (a slice of positions), one forward() -> (hidden states of the block,
    tokens it ran) at a time, as many tokens per forward as the stage's schedule says; stats, if given, counts
    the forwards per row (see denoise). Where it reads values (a GPU sync): the masked count once per block,
    and with a threshold the count each forward revealed."""
    n = blk.stop - blk.start
    left = (x[:, blk] == model.config.mask_id).sum(1).cpu()  # (B,) masked per row (a device sync per block)
    m, s = left.clone(), 0
    while left.any():
        k = reveal_counts(m, left, stage.steps, s)  # (B,) tokens each row reveals in this forward
        s += 1
        if not k.any():
            continue
        u = row_uniforms(gens, k, n).to(x.device)  # (B, 2, n): position choice, token choice
        h, n_tok = forward()  # (B, n, C): the block's hidden states
        still = x[:, blk] == model.config.mask_id
        reveal, tok, p = reveal_tokens(model, h, still, k.to(x.device), u, sampling, stage, weight_t)  # (B, n) each
        x[:, blk] = torch.where(reveal, tok, x[:, blk])
        conf[:, blk] = torch.where(reveal, p.to(conf.dtype), conf[:, blk])
        if hook:  # the positions this forward revealed, (B, T), and the live x and conf
            hook('reveal', (torch.zeros_like(x, dtype=torch.bool).index_copy_(1, torch.arange(blk.start, blk.stop, device=x.device), reveal), x, conf))
        left -= k if stage.threshold is None else reveal.sum(1).cpu()  # the threshold decided how many: a sync
        if stats is not None:
            stats['nfe'] += k > 0
            stats['token_forwards'] += (k > 0) * n_tok


def reveal_counts(m, left, steps, s):
    """How many masked positions each row reveals in step s of a block, m (B,) masked at its start and `left` still
    masked: one (BD3-LM's first-hitting sampler; L' forwards per block), or m spread evenly over `steps` forwards."""
    if steps is None:
        return (left > 0).long()
    return (m * (s + 1)) // steps - (m * s) // steps


def row_uniforms(gens, k, n):
    """(B, 2, n) uniforms, position choice and token choice, drawn only for the rows that reveal (k > 0), each from
    its own generator: a row's samples do not depend on the rest of the batch."""
    u = torch.zeros(len(gens), 2, n)
    for i in k.nonzero().flatten().tolist():
        u[i] = torch.rand(2, n, generator=gens[i])
    return u


def reveal_tokens(model, h, still, k, u, sampling, stage, weight_t=None):
    """The stage's reveal rule on a block's hidden states h (B, n, C): the revealed positions, their tokens and
    probabilities, each (B, n)."""
    if stage.order == 'random':
        reveal, tok, p = reveal_random(model, h, still, k, u, sampling.draw, weight_t)
    else:
        reveal, tok, p = reveal_confident(model, h, still, k, u, sampling.draw, weight_t, stage.threshold)
    dense = lambda v: torch.zeros(still.shape, dtype=v.dtype, device=v.device).masked_scatter(reveal, v)
    return reveal, dense(tok), dense(p)


def reveal_random(model, h, still, k, u, draw, weight_t=None):
    """BD3-LM's first-hitting step: reveal k[i] random masked positions of row i (the highest u[i, 0] among them);
    the head runs at those positions only (drawing everywhere and keeping one would throw the other draws away).
    h (B, n, C) hidden states of a block of n positions, still (B, n) its masked positions. Returns the revealed
    positions (B, n) bool, their tokens and probabilities (in row-major order)."""
    score = torch.where(still, u[:, 0], -1.0)
    rank = score.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    reveal = still & (rank < k[:, None])
    tok, p = draw(model.logits(h[reveal], weight_t), u[:, 1][reveal])
    return reveal, tok, p


def reveal_confident(model, h, still, k, u, draw, weight_t=None, threshold=None):
    """LLaDA's low-confidence remasking, read the other way: draw a token at every masked position of the rows that
    reveal (k > 0) and keep the k[i] most probable draws; with a threshold, every draw at least that probable and
    at least the most probable one (Fast-dLLM's parallel decoding). Same arguments and returns as reveal_random."""
    cand = still & (k > 0)[:, None]
    tok_c, p_c = draw(model.logits(h[cand], weight_t), u[:, 1][cand])
    tok = torch.zeros_like(still, dtype=torch.long).masked_scatter(cand, tok_c)
    p = torch.full(still.shape, -1.0, device=h.device, dtype=p_c.dtype).masked_scatter(cand, p_c)
    if threshold is not None:
        k = torch.where(k > 0, (p >= threshold).sum(1).clamp(min=1), 0)
    rank = p.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    reveal = cand & (rank < k[:, None])
    return reveal, tok[reveal], p[reveal]


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


class BlockForward:
    """The draft's forward (block size < L), exact: the current block alone against the KV cache of the clean blocks
    before it, which is what block b attends to in training (itself, and the clean copy of blocks < b). Once the
    block is complete, one forward over it writes its clean keys/values (M_BC). use_cache=False: the whole prefix
    under the block-causal mask instead (the slow reference)."""

    def __init__(self, model, x, block_size, use_cache):
        self.model, self.x, self.bs = model, x, block_size
        self.cache = KVCache(model.config.n_layer, x.size(1)) if use_cache else None

    def __call__(self, start):
        end, dev = start + self.bs, self.x.device
        if self.cache is None:
            mask = block_causal_mask(self.x.size(1), self.bs, dev)[:end, :end]
            return self.model.hidden(self.x[:, :end], torch.arange(end, device=dev), attn_mask=mask)[:, start:], end
        return self.model.hidden(self.x[:, start:end], torch.arange(start, end, device=dev), cache=self.cache), self.bs

    def fill_block(self, *args):
        return False  # this sampler fills a block one forward at a time (fill); fast.py's does it in one call

    def block_done(self, start, stats):
        end = start + self.bs
        if self.cache is not None and end < self.x.size(1):  # the last block's keys/values would never be read
            self.model.hidden(self.x[:, start:end], torch.arange(start, end, device=self.x.device), cache=self.cache)
            self.cache.advance(self.bs)
            stats['cache_passes'] += 1
            stats['token_forwards'] += self.bs


class GlobalForward:
    """A global stage's forward (block size L): the whole sequence with full attention, every forward (exact). With
    refresh r != 1 only the first forward and every r-th after it (none after it for r = 0) run the whole sequence;
    the forwards in between run the stage's masked positions alone, against every other position's keys and values
    as the last full forward left them (StaleKV): an approximation, cheaper by about L / (masked positions)."""

    def __init__(self, model, x, refresh, use_cache, hidden=None):  # hidden: model.hidden, or it compiled
        self.model, self.x, self.refresh, self.n = model, x, refresh, 0
        self.hidden = hidden or model.hidden
        self.active = None
        if use_cache and refresh != 1:
            masked = x == model.config.mask_id
            n = masked.sum(1)
            if not (n == n[0]).all():
                raise ValueError("refresh != 1 needs the same number of masked positions in every row: use refresh=1")
            self.active = masked.nonzero()[:, 1].view(len(x), -1)  # (B, M): the positions this stage denoises
            self.stale = StaleKV(model.config.n_layer)

    def __call__(self, start):
        B, L = self.x.shape
        pos = torch.arange(L, device=self.x.device)
        self.n += 1
        if self.active is None:
            return self.hidden(self.x, pos), L
        if self.n == 1 or (self.refresh > 0 and (self.n - 1) % self.refresh == 0):
            return self.model.hidden(self.x, pos, cache=self.stale), L  # refreshes every key and value
        a = self.active
        ha = self.model.hidden(self.x.gather(1, a), a, cache=ActiveKV(self.stale, a))  # (B, M, C)
        return ha.new_zeros(B, L, ha.size(-1)).scatter_(1, a[..., None].expand_as(ha), ha), a.size(1)

    def fill_block(self, *args):
        return False

    def block_done(self, start, stats):
        pass


class StaleKV:
    """Every position's keys and values, per layer, as the last full forward computed them."""

    def __init__(self, n_layer):
        self.k, self.v = [None] * n_layer, [None] * n_layer

    def put(self, layer, k, v):
        self.k[layer], self.v[layer] = k.contiguous(), v.contiguous()  # v is a view of the qkv projection: copy it
        return self.k[layer], self.v[layer]


class ActiveKV:
    """A forward over the positions idx (B, M) alone: their fresh keys and values replace the stale ones there,
    and they attend to all L positions."""

    def __init__(self, stale, idx):
        self.stale, self.idx = stale, idx

    def put(self, layer, k, v):
        i = self.idx[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))  # (B, nh, M, hs)
        self.stale.k[layer].scatter_(2, i, k)
        self.stale.v[layer].scatter_(2, i, v)
        return self.stale.k[layer], self.stale.v[layer]


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
    # the full 50K-way sort (30x slower) only for the rows whose nucleus is longer (a device sync per fallback)
    tok = torch.empty(len(probs), dtype=torch.long, device=probs.device)
    rows = torch.arange(len(probs), device=probs.device)
    for k in (64, 1024, probs.size(-1)):
        p = probs if len(rows) == len(probs) else probs[rows]
        t, ok = nucleus_topk(p, u[rows], k, top_p, nucleus)
        tok[rows[ok]] = t[ok]
        rows = rows[~ok]
        if len(rows) == 0:
            break
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1)


def nucleus_topk(probs, u, k, top_p, nucleus):
    """One pass of sample_tokens' nucleus draw over each row's k most probable tokens: the drawn tokens (N,), and
    whether the row's nucleus lies within those k (N,) bool (where it does not, its token is meaningless)."""
    sp, si = probs.topk(min(k, probs.size(-1)), dim=-1)  # (N, k), sorted descending
    ok = (sp.sum(-1) >= top_p) | (k >= probs.size(-1))
    if nucleus == 'bd3lm':  # keep a token if the mass up to and including it is <= top_p, and the first
        keep = sp.cumsum(-1) <= top_p
        keep[:, 0] = True
    else:  # keep a token if the mass before it is below top_p
        keep = (sp.cumsum(-1) - sp) < top_p
    return si.gather(-1, inverse_cdf(sp * keep, u)[:, None]).squeeze(-1), ok
