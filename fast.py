"""
The sampler as compiled, static-shape steps (gpt-fast's recipe for a block-diffusion draft): the same tokens as
did.py's eager sampler, which stays the reference.

    from fast import compiled_steps
    out = generate(model, prompt, seeds, sampling, steps=compiled_steps(model))   # did.generate
$ python sample.py --out_dir=out-tinystories --compile=True
$ python bench.py --floor=True                  # eager against compiled, and both against the matmul floor

A draft forward is a few small matmuls wrapped in dozens of small kernels and Python, and its shapes change from
block to block (the KV cache grows, the block moves), so torch.compile would retrace it at every block. Here:
  - the KV cache has all L slots from the start; a forward writes its block at the block's positions, a tensor,
    and attends to every slot up to the block's end (block_step): one graph for every block;
  - the reveal (which position, which token) has fixed shapes too (reveal_one): argmax instead of sorts, and one
    top-k pass of the nucleus draw for every row;
  - a whole block of the draft (its forwards and reveals, one token each, and the clean pass) is one compiled call
    (draft_block): on a CPU at batch 1 a forward then costs 0.8x what it does in a call of its own (docs/log.md);
  - the global stages' trunk runs on (B, L) already and is compiled as it is.
On CUDA the steps are CUDA graphs (mode='reduce-overhead'): a block's kernels are replayed as one launch. Speed on a
2-core CPU: docs/speed.md; not yet run on a GPU.
"""

import torch
from torch.nn import functional as F

from did import BlockForward, nucleus_topk, row_uniforms, sample_tokens


def compiled_steps(model, compile=True):
    """The compiled pieces for this model, made once (compiling takes seconds to a minute, once per process and
    model) and kept on it: what did.generate's steps argument takes. compile=False: the same pieces uncompiled,
    made afresh (the tests check their logic against the eager sampler without paying for a compile)."""
    if not compile or '_steps' not in model.__dict__:
        mode = 'reduce-overhead' if model.lm_head.weight.is_cuda else None
        make = (lambda fn: torch.compile(fn, mode=mode, dynamic=False)) if compile else (lambda fn: fn)
        steps = dict(block=make(block_step), hidden=make(model.hidden), draft=make(draft_block), top=[64])
        caches = {}
        steps['blocks'] = lambda model, x, block_size: StaticBlockForward(model, x, block_size, steps, caches)
        if not compile:
            return steps
        model.__dict__['_steps'] = steps  # in __dict__, not as a submodule: state_dict() and .to() never see it
    return model.__dict__['_steps']


class StaticBlockForward(BlockForward):
    """did.BlockForward with shapes that do not change from block to block (gpt-fast's static KV cache): each layer's
    cache holds all L positions from the start, (B, nh, L, hs); a forward writes its block's keys and values at the
    block's positions and attends to every slot up to the block's end, the later ones masked out. The cache ends up
    holding what did.KVCache holds. Its tensors are made once per batch shape and reused: a slot is always written
    before it is read, so they need no clearing."""

    def __init__(self, model, x, block_size, steps, caches):
        self.model, self.x, self.bs, self.steps, self.step = model, x, block_size, steps, steps['block']
        C, nh, B, L = model.config.n_embd, model.config.n_head, *x.shape
        dev = x.device.type  # keys and values in the dtype attention runs in (autocast's; 'meta': the tests' fake device)
        dtype = torch.get_autocast_dtype(dev) if dev != 'meta' and torch.is_autocast_enabled(dev) else model.lm_head.weight.dtype
        key = (B, L, dtype, x.device)
        if key not in caches:
            caches[key] = [torch.zeros(B, nh, L, C // nh, device=x.device, dtype=dtype) for _ in range(2 * model.config.n_layer)]
            for t in caches[key]:  # CUDA graphs write the cache where they were recorded: its address must not change
                torch._dynamo.mark_static_address(t)
        self.k, self.v = caches[key][0::2], caches[key][1::2]
        self.exact = False  # True once a draw's nucleus was longer than draft_block's reach
        self.pos = torch.arange(L, device=x.device).view(-1, block_size)  # (L / bs, bs): each block's positions

    def __call__(self, start):
        return self.step(self.model, self.x[:, start:start + self.bs], self.pos[start // self.bs], self.k, self.v), self.bs

    def fill_block(self, x, conf, start, stage, gens, sampling, stats, weight_t, hook):
        """did.fill and block_done for a stage that reveals one token per forward, in one compiled call (draft_block):
        a call's cost and, on a GPU, the sync that reads whether its draws fit are paid once a block, not once a forward.
        Each row draws its uniforms first, as many as it has masked positions, as fill would draw them one forward at a
        time. False: fill does the block (and block_done its clean pass), for a stage that reveals more than one token
        a forward, a block at most half masked, or a draw whose nucleus is longer than 1024 tokens (the generators
        rewound: the same uniforms)."""
        if stage.steps is not None or stage.threshold is not None or self.exact:
            return False
        n, mask_id, blk = self.bs, self.model.config.mask_id, slice(start, start + self.bs)
        xb, cb = x[:, blk].clone(), conf[:, blk].clone()
        m = (xb == mask_id).sum(1).cpu()  # (B,) masked per row (a GPU sync per block, as in fill)
        if 2 * m.max() <= n:  # fill runs max(m) forwards and the clean pass, fewer than draft_block's n + 1
            return False
        states = [g.get_state() for g in gens]
        u = torch.stack([row_uniforms(gens, m > s, n) for s in range(n)], 1)  # (B, step, 2, n): fill's draws, step by step
        top = self.steps['top']  # the draw's reach: the 64 most probable tokens until a nucleus is longer, then 1024
        run = lambda: self.steps['draft'](self.model, xb, cb, self.pos[start // n], self.k, self.v, u.to(x.device), sampling,
                                          stage.order == 'confidence', weight_t, top=top[0])
        out = run()
        if not out[-1] and top[0] == 64:  # a sync on a GPU, one a block
            top[0] = 1024
            del out  # (a CUDA graph's outputs live in its memory pool)
            out = run()
        if not out[-1]:  # a nucleus longer than 1024 tokens (an untrained model's): fill's exact rules, from the same
            self.exact = True  # uniforms, for the rest of this stage
            for g, st in zip(gens, states):
                g.set_state(st)
            return False
        xb2, cb2, when = out[:3]  # when (B, n): the forward that revealed each position, -1 none
        if hook:  # each forward's reveal, with x and conf as they were after it
            pos = torch.arange(start, start + n, device=x.device)
            for s in range(int(m.max())):
                x[:, blk], conf[:, blk] = torch.where(when > s, mask_id, xb2), torch.where(when > s, cb, cb2)
                hook('reveal', (torch.zeros_like(x, dtype=torch.bool).index_copy_(1, pos, when == s), x, conf))
        x[:, blk], conf[:, blk] = xb2, cb2
        stats['nfe'] += m
        stats['token_forwards'] += m * n
        if start + n < x.size(1):  # draft_block's clean pass (the last block's is not counted: its keys are never read)
            stats['cache_passes'] += 1
            stats['token_forwards'] += n
        return True

    def block_done(self, start, stats):
        if start + self.bs < self.x.size(1):  # the clean block's keys and values overwrite the noisy ones
            self(start)
            stats['cache_passes'] += 1
            stats['token_forwards'] += self.bs


def block_step(model, idx, pos, k, v):
    """A draft forward of one block, idx (B, T) at positions pos (T,), against the static cache k, v (per layer,
    (B, nh, L, hs)) filled before pos[0]: the block's hidden states (B, T, C); its keys and values are written at
    pos. No shape depends on where the block is."""
    seen = torch.arange(k[0].size(2), device=idx.device) <= pos[-1]  # (L,): the prefix and the block
    mask = torch.zeros(len(pos), k[0].size(2), device=idx.device, dtype=k[0].dtype).masked_fill(~seen, float('-inf'))
    return model.hidden(idx, pos, attn_mask=mask, cache=StaticKV(k, v, pos))  # additive: on a CPU 1.6x faster than bool


def draft_block(model, xb, cb, pos, k, v, u, sampling, confidence, weight_t=None, top=64):
    """A whole block of the draft, one token per forward: n block_steps, each followed by reveal_one, then the clean
    block's pass that writes its keys and values (also after the last block, where they are never read: one graph for
    every block). xb (B, n) the block's tokens, cb (B, n) their confidences, u (B, n, 2, n) each forward's uniforms.
    A row with nothing left to reveal runs the forward and reveals nothing, as in a batch of fill. Returns the block's
    tokens and confidences, when (B, n) the forward that revealed each position (-1: none) and ok (reveal_one's)."""
    mask_id, n = model.config.mask_id, xb.size(1)
    when = torch.full_like(xb, -1)
    ok = torch.ones((), dtype=torch.bool, device=xb.device)
    for s in range(n):
        still = xb == mask_id  # (B, n)
        h = block_step(model, xb, pos, k, v)
        reveal, tok, p, ok_s = reveal_one(model, h, still, still.any(1).long(), u[:, s], sampling, confidence, weight_t, top)
        xb, cb, when = torch.where(reveal, tok, xb), torch.where(reveal, p.to(cb.dtype), cb), torch.where(reveal, s, when)
        ok = ok & ok_s
    block_step(model, xb, pos, k, v)
    return xb, cb, when, ok


class StaticKV:
    """block_step's cache: a layer's keys and values written in place at the block's positions."""

    def __init__(self, k, v, pos):
        self.k, self.v, self.pos = k, v, pos

    def put(self, layer, k, v):
        self.k[layer][:, :, self.pos] = k
        self.v[layer][:, :, self.pos] = v
        return self.k[layer], self.v[layer]


def reveal_one(model, h, still, k, u, sampling, confidence, weight_t=None, top=64):
    """did.reveal_random and did.reveal_confident for at most one token per row (k <= 1) with fixed shapes: the
    position with the highest u[i, 0] among the masked ones (random order), or the most probable of the draws at every
    masked position (confidence order: a block is a few positions, so the head runs at all of them). Ties go to the
    first position, as in the exact rules' stable sorts. Returns reveal, tok, p, each (B, n), and whether every draw
    it used had its nucleus among its `top` most probable tokens (if not, the block is redone with a longer reach, or
    by the exact rules)."""
    B, n, C = h.shape
    draw = lambda logits, u: sample_tokens_static(logits, u, sampling.top_p, sampling.temperature, sampling.nucleus, top)
    if confidence:
        tok, p, ok = draw(model.logits(h.flatten(0, 1), weight_t), u[:, 1].flatten())  # (B n,)
        tok, p, ok = tok.view(B, n), p.view(B, n), (ok.view(B, n) | ~still).all(1)
        i = torch.where(still, p, -1.0).argmax(1, keepdim=True)  # (B, 1)
    else:
        i = torch.where(still, u[:, 0], -1.0).argmax(1, keepdim=True)  # (B, 1)
        hi = h.gather(1, i[..., None].expand(B, 1, C)).squeeze(1)  # (B, C)
        tok, p, ok = draw(model.logits(hi, weight_t), u[:, 1].gather(1, i).squeeze(1))  # (B,)
        tok, p = tok[:, None].expand(B, n), p[:, None].expand(B, n)
    reveal = (torch.arange(n, device=h.device) == i) & still  # (B, n): nothing in a row with nothing masked (k = 0)
    return reveal, tok, p, (ok | (k == 0)).all()


def sample_tokens_static(logits, u, top_p=0.9, temperature=1.0, nucleus='standard', top=64):
    """did.sample_tokens with fixed shapes: one of its top-k passes (top: 64 or 1024) for every row. Returns tokens,
    probabilities and ok (N,): False where a row's nucleus is longer than `top` tokens; there sample_tokens' token is
    the one its next pass draws. Where the pass holds the nucleus, it draws as sample_tokens does."""
    if temperature == 0 or top_p >= 1.0:  # no nucleus: sample_tokens has fixed shapes here
        tok, p = sample_tokens(logits, u, top_p, temperature, nucleus)
        return tok, p, torch.ones_like(tok, dtype=torch.bool)
    probs = F.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)  # (N, V)
    tok, ok = nucleus_topk(probs, u, top, top_p, nucleus)
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1), ok
