"""
Beyond the paper's fixed length, with did.py's model and samplers: infilling with the global stage (every fixed
token visible to every hole), and text of any length (a draft whose KV cache slides by half a window, refined
window by window).
"""

import math
from dataclasses import replace

import torch

from did import PAPER, KVCache, Stage, block_causal_mask, denoise, diffuse, fill, lowest


@torch.no_grad()
def infill(model, ids, seeds, sampling=replace(PAPER, stages=(Stage('L'), Stage('L', 0.25))), hook=None):
    """Fill the holes of ids (a list of T <= seq_len token ids, MASK at the holes; everything else is fixed). The
    default is DiD's global stage: one block of T positions, every fixed token visible to every hole, then a refine
    of gamma 0.25 of the filled positions. A first stage of small blocks fills the holes left to right instead,
    each block seeing only what precedes it (how a block-diffusion draft would). Returns generate's dict."""
    sampling.check(len(ids), 1)
    x = torch.tensor([ids] * len(seeds), dtype=torch.long, device=model.lm_head.weight.device)
    if not (x == model.config.mask_id).any():
        raise ValueError("nothing to fill: ids have no MASK")
    return diffuse(model, x, x != model.config.mask_id, seeds, sampling, hook=hook)


def check_long(sampling, L, prompt_len, max_len):
    """generate_long's own settings, one ValueError each: the draft's blocks tile the window it slides by (L/2),
    every later stage is global, and there is room after the prompt."""
    stages = sampling.at(L)
    if max_len <= prompt_len:
        raise ValueError(f"max_len={max_len} leaves no room after the prompt's {prompt_len} tokens: give more")
    bs = stages[0].block_size
    if bs == L or any(s.block_size != L for s in stages[1:]) or (L // 2) % bs:
        raise ValueError(f"any-length sampling drafts with blocks smaller than L={L} that divide L/2 and refines with "
                         f"block size L (e.g. stages 4:1.0,L:0.25); got block sizes {[s.block_size for s in stages]}")

@torch.no_grad()
def generate_long(model, prompt, seeds, max_len, sampling=PAPER, stop=None, hook=None):
    """Sequences of up to max_len tokens, also beyond the training length L (BD3-LM's variable-length sampling).

    The draft (stages[0], blocks of B < L) goes on block by block, and its KV cache holds a window of at most L
    positions: when it is full, the cache is rebuilt from prompt[0] (the <|endoftext|> every training window starts
    with) and the last L/2 - 1 tokens at positions 0..L/2-1, and the draft goes on from position L/2. Every block
    thus sees between L/2 and L tokens of context whose keys and values are exactly those of a fresh forward (the
    training mask's clean copy), at the rotary positions training used. A row that writes `stop` past the prompt
    (e.g. <|endoftext|>) ends there and leaves the batch. The later stages (block size L) refine each row window by
    window: positions [0, L), then prompt[0] + the next L - 1 tokens, and so on; a window remasks gamma of its own
    generated tokens and sees only itself (refine_windows). Returns, per row, dict(tokens, conf, draft, remasked) as lists."""
    L, mask_id, n_layer = model.config.seq_len, model.config.mask_id, model.config.n_layer
    sampling.check(L, len(prompt))
    check_long(sampling, L, len(prompt), max_len)
    stages = sampling.at(L)
    bs, W, P = stages[0].block_size, L // 2, len(prompt)
    device = model.lm_head.weight.device
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    n_blocks = -(-max_len // bs)
    x = torch.full((len(seeds), n_blocks * bs), mask_id, dtype=torch.long, device=device)
    x[:, :P] = torch.tensor(prompt, dtype=torch.long, device=device)
    conf = torch.ones(x.shape, device=device, dtype=torch.promote_types(model.lm_head.weight.dtype, torch.float32))
    out = [None] * len(seeds)
    rows, cache, off = list(range(len(seeds))), KVCache(n_layer, L), 0  # window position = position - off
    xa, ca, ga = x.clone(), conf.clone(), list(gens)  # the rows still drafting
    weight_t = model.lm_head.weight.t().contiguous()
    for start in range(0, n_blocks * bs, bs):
        if start - off + bs > L:  # the window is full: rebuild it from prompt[0] and the last W - 1 tokens
            off, cache = start - W, KVCache(n_layer, L)
            win = torch.cat([xa[:, :1], xa[:, start - W + 1:start]], 1)  # (B, W)
            pos = torch.arange(W, device=device)
            model.hidden(win, pos, attn_mask=block_causal_mask(L, bs, device)[:W, :W], cache=cache)
            cache.advance(W)
        pos = torch.arange(start - off, start - off + bs, device=device)
        forward = lambda: (model.hidden(xa[:, start:start + bs], pos, cache=cache), bs)  # noqa: E731
        fill(model, xa, ca, slice(start, start + bs), stages[0], ga, sampling, forward, None, weight_t)
        model.hidden(xa[:, start:start + bs], pos, cache=cache)  # the clean block's keys and values
        cache.advance(bs)
        blk = xa[:, start:start + bs]
        pos_abs = torch.arange(start, start + bs, device=device)
        hit = (blk == stop) & (pos_abs >= P) & (pos_abs < max_len) if stop is not None else torch.zeros_like(blk, dtype=torch.bool)
        done = hit.any(1) | (start + bs >= max_len)
        for j in done.nonzero().flatten().tolist():
            end = start + int(hit[j].int().argmax()) + 1 if hit[j].any() else max_len
            out[rows[j]] = dict(tokens=xa[j, :end].tolist(), conf=ca[j, :end].tolist(), stopped=bool(hit[j].any()))
        if hook:
            hook('block', 0, (start + bs, len(rows) - int(done.sum())))
        if done.all():
            break
        keep = ~done  # finished rows leave the batch and cost nothing further
        xa, ca, rows = xa[keep], ca[keep], [r for r, k in zip(rows, keep.tolist()) if k]
        ga = [g for g, k in zip(ga, keep.tolist()) if k]
        cache.k, cache.v = cache.k[:, keep], cache.v[:, keep]
    for o, g in zip(out, gens):  # the refine: each window of each row on its own
        refine_windows(model, o, prompt, stages[1:], g, sampling, stop)
    return out


def refine_windows(model, o, prompt, stages, gen, sampling, stop=None):
    """generate_long's refine of one drafted row o (tokens, conf, stopped), in place: windows [0, L), then prompt[0]
    + the next L - 1 tokens, and so on; each window remasks gamma of its own generated tokens, sees only itself,
    and starts as a training window does. Records the draft and the remasked positions in o."""
    L, mask_id, P = model.config.seq_len, model.config.mask_id, len(prompt)
    o['draft'], o['remasked'], n = list(o['tokens']), [], len(o['tokens'])
    bounds = [(0, min(L, n))] + [(a, min(a + L - 1, n)) for a in range(L, n, L - 1)]
    weight = model.lm_head.weight  # the device and dtype of the model
    for w, (a, b) in enumerate(bounds):
        head = [] if w == 0 else [prompt[0]]
        xw = torch.tensor([head + o['tokens'][a:b]], device=weight.device)
        cw = torch.tensor([[1.0] * len(head) + o['conf'][a:b]], device=weight.device, dtype=torch.promote_types(weight.dtype, torch.float32))
        fixed = torch.zeros_like(xw, dtype=torch.bool)
        fixed[:, :P if w == 0 else 1] = True
        fixed[:, -1] |= o['stopped'] and b == n  # the stop token that ended the row stays
        for stage in stages:
            sel = lowest(model, xw, cw, [gen], math.floor(stage.gamma * (xw.size(1) - int(fixed.sum()))), fixed, sampling.remask)
            xw[sel] = mask_id
            denoise(model, xw, cw, replace(stage, block_size=xw.size(1)), [gen], sampling)
            o['remasked'] += [a + j - len(head) for j in sel[0].nonzero().flatten().tolist()]
        o['tokens'][a:b], o['conf'][a:b] = xw[0, len(head):].tolist(), cw[0, len(head):].tolist()
    if stop is not None and stop in o['tokens'][P:-1]:  # a refine that wrote the stop token earlier ends the row there
        end = o['tokens'].index(stop, P) + 1
        o['tokens'], o['conf'], o['draft'] = o['tokens'][:end], o['conf'][:end], o['draft'][:end]
        o['remasked'] = [j for j in o['remasked'] if j < end]
