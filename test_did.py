"""
Tests for did: fast paths against slow, obvious references, on the CPU, offline.

$ python -m pytest -q test_did.py                 # everything
$ python -m pytest -q -m "not slow" test_did.py   # without the end-to-end runs of the scripts: half a minute

Offline caches: when ../shared/data (this project's workspace) sits beside the checkout, the tests take the GPT-2
BPE files and Tiny Shakespeare from it; without it they use a synthetic play and skip the GPT-2 tokenizer tests.
"""
import atexit
import contextlib
import io
import json
import math
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from did import (PAPER, DiD, DiDConfig, KVCache, Sampling, Stage, add_noise, block_causal_mask, block_diff_mask, diffusion_loss, generate,
                 head_cross_entropy)
from mfu import attention_fraction, estimate_flops, live_fraction
ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(ROOT, '..', 'shared', 'data')
TIKTOKEN_CACHE = os.path.join(SHARED, 'gpt2_bpe', 'tiktoken_cache')
if os.path.isdir(TIKTOKEN_CACHE):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', TIKTOKEN_CACHE)
if 'TIKTOKEN_CACHE_DIR' in os.environ:  # a relative path (as the README writes it) must survive the subprocesses' cwd
    os.environ['TIKTOKEN_CACHE_DIR'] = os.path.abspath(os.environ['TIKTOKEN_CACHE_DIR'])
SHAKESPEARE = os.path.join(SHARED, 'text', 'tinyshakespeare.txt')


def tiny_model(L=32, V=40, seed=0, std=0.3, n_layer=2):
    """A small float64 model with random (not zero) head weights, so outputs depend on the input."""
    torch.manual_seed(seed)
    model = DiD(DiDConfig(seq_len=L, vocab_size=V, n_layer=n_layer, n_head=2, n_embd=16)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def sampler(*stages, **kw):
    """A Sampling of these stages; the token draw is the textbook nucleus (the reference samplers' draw) unless kw
    says otherwise, the rest the paper's (did.PAPER)."""
    return Sampling(tuple(stages), **{'nucleus': 'standard', **kw})


# -----------------------------------------------------------------------------
# the attention masks

def reference_mask(L, B):
    """The mask from its definition, one (query, key) pair at a time, in words."""
    M = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for i in range(2 * L):
        for j in range(2 * L):
            q_noisy, k_noisy = i < L, j < L
            qb, kb = (i % L) // B, (j % L) // B
            if q_noisy and k_noisy:
                M[i, j] = qb == kb   # a noisy block sees only itself among the noisy tokens
            elif q_noisy and not k_noisy:
                M[i, j] = kb < qb    # ... and the clean blocks before it
            elif not q_noisy and not k_noisy:
                M[i, j] = kb <= qb   # clean tokens: block-causal
            else:
                M[i, j] = False      # clean tokens never see noisy ones
    return M


@pytest.mark.parametrize('L,B', [(8, 1), (8, 2), (12, 4), (16, 16), (24, 8)])
def test_block_diff_mask_matches_definition(L, B):
    M = block_diff_mask(L, B)
    assert torch.equal(M, reference_mask(L, B))
    assert not M[L:, :L].any()  # the clean half never sees the noisy half
    assert torch.equal(M[L:, L:], block_causal_mask(L, B))
    if B == L:
        assert M[:L, :L].all() and not M[:L, L:].any()  # global diffusion: full attention, no clean reads


# -----------------------------------------------------------------------------
# forward noise and the loss

def test_noise_respects_interval_strata_and_resampling():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 39, (16, 64))
    B, eps_min, eps_max = 8, 0.3, 0.8
    x_t, t = add_noise(x0, B, 39, eps_min, eps_max, resample=True, generator=g)
    assert ((t >= eps_min) & (t <= eps_max)).all()
    tb = t.view(16, 8, B)
    assert (tb == tb[..., :1]).all()  # one t per (sequence, block)
    u = ((tb[..., 0] - eps_min) / (eps_max - eps_min)).flatten().sort().values
    n = len(u)
    assert ((u >= torch.arange(n) / n - 1e-6) & (u < (torch.arange(n) + 1) / n + 1e-6)).all()  # one per stratum
    masked = x_t == 39
    frac = masked.view(16, 8, B).float().mean(-1)
    assert ((frac >= eps_min) & (frac <= eps_max)).all()  # resampled realized fractions
    assert torch.equal(x_t[~masked], x0[~masked])
    # without resampling the expected masked fraction is the mean t
    x_t, t = add_noise(torch.zeros(64, 256, dtype=torch.long), 4, 39, 0.0, 1.0, generator=g)
    assert abs((x_t == 39).float().mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match='widen the noise interval'):
        add_noise(x0, 1, 39, 0.3, 0.8, resample=True, generator=g)  # no fraction of a 1-token block fits


def reference_loss(model, x0, x_t, t, B):
    """Block by block: block b's noisy tokens run after only the clean blocks < b, the slow obvious way."""
    N, L = x0.shape
    total = 0.0
    for b in range(L // B):
        s, e = b * B, (b + 1) * B
        inp = torch.cat([x0[:, :s], x_t[:, s:e]], dim=1)
        h = model.hidden(inp, torch.arange(e), attn_mask=block_causal_mask(L, B)[:e, :e])[:, s:e]
        logp = F.log_softmax(model.logits(h), dim=-1).gather(-1, x0[:, s:e, None]).squeeze(-1)
        masked = x_t[:, s:e] == model.config.mask_id
        total = total + (-logp * masked / t[:, s:e]).sum()  # SUBS: unmasked positions carry no loss
    return total / (N * L)


@pytest.mark.parametrize('B', [1, 4, 8, 32])
def test_vectorized_loss_equals_per_block_loop(B):
    model = tiny_model()
    g = torch.Generator().manual_seed(B)
    x0 = torch.randint(0, 39, (3, 32), generator=g)
    x_t, t = add_noise(x0, B, 39, generator=g)
    fast = diffusion_loss(model, x0, x_t, t, B)
    slow = reference_loss(model, x0, x_t, t, B)
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-12), (fast.item(), slow.item())
    # and the gradients of the fused head cross-entropy match autograd through F.cross_entropy
    g1 = torch.autograd.grad(fast, list(model.parameters()))
    g2 = torch.autograd.grad(slow, list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-8, atol=1e-12) for a, b in zip(g1, g2))


def noisy_batch(seed, L=32, B=4, n=2):
    """x0, x_t, t and the generator, for a tiny_model-sized vocabulary (MASK = 39)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 39, (n, L), generator=g)
    return (x0, *add_noise(x0, B, 39, generator=g), g)


def test_clean_future_blocks_never_change_a_noisy_block():
    model = tiny_model()
    L, B = 32, 4
    x0, x_t, _, g = noisy_batch(1)
    mask = block_diff_mask(L, B)
    pos = torch.arange(L)
    def noisy_logits(x_t, x0):
        return model.logits(model.hidden(torch.cat([x_t, x0], 1), torch.cat([pos, pos]), attn_mask=mask)[:, :L])
    base = noisy_logits(x_t, x0)
    for b in range(L // B):
        x0_changed = x0.clone()
        x0_changed[:, b * B:] = torch.randint(0, 39, (2, L - b * B), generator=g)
        x_t_changed = x_t.clone()  # the other noisy blocks may change too
        keep = torch.zeros(L, dtype=torch.bool)
        keep[b * B:(b + 1) * B] = True
        x_t_changed[:, ~keep] = torch.randint(0, 40, (2, L - B), generator=g)
        out = noisy_logits(x_t_changed, x0_changed)
        assert torch.equal(out[:, keep], base[:, keep])
        if b > 0:  # a clean token of an earlier block does change it
            x0_prev = x0.clone()
            x0_prev[:, b * B - 1] = (x0_prev[:, b * B - 1] + 1) % 39
            assert not torch.allclose(noisy_logits(x_t, x0_prev)[:, keep], base[:, keep])


def test_global_block_l_path_equals_2l_path():
    model = tiny_model()
    L = 32
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 39, (3, L), generator=g)
    x_t, t = add_noise(x0, L, 39, generator=g)
    pos = torch.arange(L)
    h = model.hidden(torch.cat([x_t, x0], 1), torch.cat([pos, pos]), attn_mask=block_diff_mask(L, L))[:, :L]
    masked = x_t == 39
    two_l = (head_cross_entropy(model, h[masked], x0[masked]) / t[masked]).sum() / (3 * L)
    assert torch.allclose(diffusion_loss(model, x0, x_t, t, L), two_l, rtol=1e-12)


def test_mask_and_padding_are_never_predicted():
    model = tiny_model(V=40)
    assert model.config.padded_vocab == 64
    logits = model.logits(model.hidden(torch.randint(0, 40, (1, 8)), torch.arange(8)))
    assert torch.isinf(logits[..., 39:]).all() and torch.isfinite(logits[..., :39]).all()


def test_zero_head_starts_at_uniform_loss():
    model = DiD(DiDConfig(seq_len=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16))
    x0 = torch.randint(0, 39, (2, 16))
    assert abs(model(x0).item() - math.log(39)) < 1e-5  # AR loss: uniform over the 39 real tokens


def test_attention_has_no_probability_dropout(monkeypatch):
    """BD3-LM drops out the residual branches only; SDPA must never get a dropout_p, even in training mode."""
    seen = []
    real = F.scaled_dot_product_attention
    def spy(*args, **kw):
        seen.append(kw.get('dropout_p', 0.0))
        return real(*args, **kw)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    model = DiD(DiDConfig(seq_len=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16, dropout=0.3)).train()
    x0 = torch.randint(0, 39, (2, 16))
    x_t, t = add_noise(x0, 4, 39)
    diffusion_loss(model, x0, x_t, t, 4).backward()
    assert seen and all(d == 0.0 for d in seen)


def test_clipped_schedule_search_finds_the_lowest_variance_interval():
    """A synthetic loss whose per-block values spread least on [0.3, 0.8]: the search must pick exactly it."""
    from did import clipped_schedule_search, search_intervals
    cands = search_intervals()
    assert len(cands) == 36 and (1e-3, 1.0) in cands and (0.3, 0.8) in cands and (0.45, 0.95) in cands
    def block_losses(iv):  # two batches of two blocks each; sample variance 2 a^2 per batch
        a = 0.1 + abs(iv[0] - 0.3) + abs(iv[1] - 0.8)
        return [torch.tensor([[1 - a, 1 + a]], dtype=torch.float64), torch.tensor([[2 - a], [2 + a]], dtype=torch.float64)]
    best, scores = clipped_schedule_search(block_losses, cands)
    assert best == (0.3, 0.8) and abs(scores[best] - 2 * 2 * 0.1 ** 2) < 1e-12
    assert min(v for k, v in scores.items() if k != best) > scores[best]


def test_bos_position_is_never_masked_and_not_scored():
    """BD3-LM's ignore_bos: position 0 stays clean and the validation NELBO averages over the other L - 1."""
    from did import nelbo
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 39, (4, 32), generator=g)
    x_t, t = add_noise(x0, 4, 39, 0.5, 1.0, resample=True, generator=g, keep_first=True)
    assert (x_t[:, 0] == x0[:, 0]).all() and (x_t[:, 1:] == 39).any()
    x_t, t = add_noise(x0, 4, 39, generator=torch.Generator().manual_seed(1337), keep_first=True)
    expected = diffusion_loss(model, x0, x_t, t, 4).item() * 32 / 31
    assert abs(nelbo(model, [x0], 4, seed=1337, bos=True) - expected) < 1e-12


# -----------------------------------------------------------------------------
# the samplers: draft, refine, faster schedules, AR

@pytest.mark.parametrize('B', [1, 4, 8, 16])
def test_kv_cached_draft_equals_uncached(B):
    model = tiny_model()
    cached = generate(model, [5], seeds=[1, 2, 3], sampling=sampler(Stage(B)), use_cache=True)
    uncached = generate(model, [5], seeds=[1, 2, 3], sampling=sampler(Stage(B)), use_cache=False)
    assert torch.equal(cached['tokens'], uncached['tokens'])
    assert torch.allclose(cached['conf'], uncached['conf'], rtol=1e-10)
    assert (cached['stats'][0]['nfe'] == 31).all() and (uncached['stats'][0]['nfe'] == 31).all()  # one token per forward
    assert (cached['stats'][0]['token_forwards'] < uncached['stats'][0]['token_forwards']).all() or B == 32


def test_cached_block_logits_equal_training_noisy_half():
    model = tiny_model()
    L, B = 32, 4
    x0, x_t, _, _ = noisy_batch(3)
    pos = torch.arange(L)
    h = model.hidden(torch.cat([x_t, x0], 1), torch.cat([pos, pos]), attn_mask=block_diff_mask(L, B))[:, :L]
    train_logits = model.logits(h)
    cache = KVCache(model.config.n_layer, L)
    for s in range(0, L, B):
        hb = model.hidden(x_t[:, s:s + B], torch.arange(s, s + B), cache=cache)  # the noisy block, as sampled
        assert torch.allclose(model.logits(hb), train_logits[:, s:s + B], rtol=1e-9, atol=1e-10)
        model.hidden(x0[:, s:s + B], torch.arange(s, s + B), cache=cache)  # then its clean keys/values
        cache.advance(B)


def counts(stats):
    """Per-row forward counts as a list of dicts, one per sequence."""
    return [{k: int(v[i]) for k, v in stats.items()} for i in range(len(stats['nfe']))]


def test_draft_fills_everything_keeps_prompt_and_counts_forwards():
    model = tiny_model()
    prompt = [3, 7, 11, 2, 9, 1]  # reaches into the second block of 4
    out = generate(model, prompt, seeds=[0, 1], sampling=sampler(Stage(4)))
    assert not (out['tokens'] == 39).any()
    assert (out['tokens'][:, :6] == torch.tensor(prompt)).all()
    assert counts(out['stats'][0]) == [dict(nfe=32 - 6, cache_passes=32 // 4 - 1, token_forwards=(26 + 7) * 4)] * 2
    # two steps per block of 8: block 0 has 2 masked (one each step), the others 8 (four each step)
    out = generate(model, prompt, seeds=[0, 1], sampling=sampler(Stage(8, steps=2)))
    assert not (out['tokens'] == 39).any()
    assert counts(out['stats'][0]) == [dict(nfe=4 * 2, cache_passes=3, token_forwards=(8 + 3) * 8)] * 2
    # a global draft (B = L) runs the whole sequence each step, with no cache
    out = generate(model, prompt, seeds=[0], sampling=sampler(Stage(32, steps=5)))
    assert not (out['tokens'] == 39).any() and counts(out['stats'][0]) == [dict(nfe=5, cache_passes=0, token_forwards=5 * 32)]


@pytest.mark.parametrize('remask', ['snapshot', 'posthoc', 'random'])
def test_refine_remasks_floor_gamma_n_lowest_and_keeps_the_rest(remask):
    model = tiny_model()
    seeds = [4, 5, 6]
    draft = generate(model, [5], seeds, sampler(Stage(4)))
    for gamma, refine_b in [(0.25, 32), (0.5, 8)]:
        out = generate(model, [5], seeds, sampler(Stage(4), Stage(refine_b, gamma), remask=remask))
        sel = out['remasked'][1]
        r = math.floor(gamma * 31)
        assert (sel.sum(1) == r).all() and not sel[:, 0].any()  # the prompt is never remasked
        assert torch.equal(out['history'][0], draft['tokens'])  # same seeds: the same draft
        assert torch.equal(out['tokens'][~sel], draft['tokens'][~sel])  # everything else is untouched
        assert torch.equal(out['conf'][~sel], draft['conf'][~sel])
        assert not (out['tokens'] == 39).any()
        if remask == 'snapshot':
            lowest = draft['conf'][:, 1:].argsort(dim=1)[:, :r] + 1
            assert torch.equal(sel, torch.zeros_like(sel).scatter_(1, lowest, True))
            # the refined positions got fresh snapshot confidences from the refine stage
            assert not torch.equal(out['conf'][sel], draft['conf'][sel])


def test_snapshot_confidence_is_the_probability_at_commit():
    """A model whose output distribution we know: zero head weights, so p = softmax(bias) at every position."""
    model = tiny_model(V=8)  # 7 real tokens + MASK
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02], dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias[:7] = p.log()
    seeds = list(range(6))
    out = generate(model, [0], seeds, sampler(Stage(4), top_p=1.0))
    assert torch.allclose(out['conf'][:, 1:], p[out['tokens'][:, 1:]])
    assert len(out['tokens'][:, 1:].unique()) >= 5  # really sampled from the whole distribution
    # nucleus 0.6 keeps {0, 1} (0.4 < 0.6 before token 1; 0.65 >= 0.6 before token 2); the confidence is
    # still the untruncated probability
    out = generate(model, [0], seeds, sampler(Stage(4), top_p=0.6))
    assert set(out['tokens'][:, 1:].unique().tolist()) == {0, 1}
    assert torch.allclose(out['conf'][:, 1:], p[out['tokens'][:, 1:]])
    # temperature reshapes the distribution the token is drawn from, and the recorded probability with it
    out = generate(model, [0], seeds, sampler(Stage(4), top_p=1.0, temperature=0.5))
    assert torch.allclose(out['conf'][:, 1:], F.softmax(p.log() / 0.5, -1)[out['tokens'][:, 1:]])


def test_bd3lm_nucleus_rule_drops_the_crossing_token():
    """top_p = 0.7 over p = (0.4, 0.25, 0.15, ...): the cumulative mass is 0.4, 0.65, 0.8. The textbook rule keeps
    tokens until the mass reaches 0.7 ({0, 1, 2}); BD3-LM's keeps those whose cumulative mass is <= 0.7 ({0, 1});
    with top_p below the first token's mass, BD3-LM's rule still keeps that one."""
    model = tiny_model(V=8)
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02], dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias[:7] = p.log()
    seeds = list(range(8))
    got = {rule: set(generate(model, [0], seeds, sampler(Stage(4), top_p=top, nucleus=rule))['tokens'][:, 1:].unique().tolist())
           for rule, top in (('standard', 0.7), ('bd3lm', 0.7))}
    assert got == {'standard': {0, 1, 2}, 'bd3lm': {0, 1}}
    assert set(generate(model, [0], seeds, sampler(Stage(4), top_p=0.3, nucleus='bd3lm'))['tokens'][:, 1:].unique().tolist()) == {0}


def test_refine_forward_counts_are_per_row():
    """A refine stage with blocks of 8: each row reveals its own remasked tokens one per forward, so its count is
    its own number of remasked tokens (plus a cache write per block), not the batch's busiest row per block."""
    model = tiny_model()
    out = generate(model, [5], [4, 5, 6], sampler(Stage(4), Stage(8, 0.5)))
    r = math.floor(0.5 * 31)
    assert counts(out['stats'][1]) == [dict(nfe=r, cache_passes=3, token_forwards=(r + 3) * 8)] * 3
    per_block = out['remasked'][1].view(3, 4, 8).sum(-1)  # remasked tokens per (row, block)
    assert per_block.max(0).values.sum() > r  # the batch-max count would have been larger


def reference_sample(model, prompt, seed, stages):
    """Today's exact sampler written the slow, obvious way for one sequence: every step runs the whole prefix
    (block-causal mask) or the whole sequence (global stage), reveals the still-masked position with the highest
    position-uniform, and draws its token with the token-uniform: the per-row random stream of did.generate."""
    from did import sample_tokens
    L, mask_id = model.config.seq_len, model.config.mask_id
    g = torch.Generator().manual_seed(seed)
    x = torch.full((L,), mask_id, dtype=torch.long)
    x[:len(prompt)] = torch.tensor(prompt)
    conf = torch.ones(L, dtype=torch.float64)
    for k, (bs, gamma) in enumerate((s.block_size, s.gamma) for s in stages):
        if k:  # snapshot remasking: the floor(gamma * n) lowest confidences, prompt excluded
            score = conf.clone()
            score[:len(prompt)] = float('inf')
            x[score.argsort(stable=True)[:math.floor(gamma * (L - len(prompt)))]] = mask_id
        for start in range(0, L, bs):
            end = start + bs
            while (x[start:end] == mask_id).any():
                u = torch.rand(2, bs, generator=g)
                still = x[start:end] == mask_id
                j = torch.where(still, u[0], -1.0).argmax().item()
                mask = block_causal_mask(L, bs)[:end, :end] if bs < L else None
                h = model.hidden(x[None, :end], torch.arange(end), attn_mask=mask)[0, start + j]
                tok, p = sample_tokens(model.logits(h[None]), u[1, j:j + 1])
                x[start + j], conf[start + j] = tok.item(), p.item()
    return x


def test_exact_sampler_equals_the_slow_reference():
    """One token per step, random order, refresh 1: token for token the sampler defined above, with the KV cache
    and without, for drafts and refines with small and global blocks."""
    model = tiny_model()
    for stages in ([Stage(4)], [Stage(4), Stage(32, 0.25)], [Stage(8), Stage(4, 0.5)]):
        ref = torch.stack([reference_sample(model, [5, 6], s, stages) for s in (3, 4)])
        for use_cache in (True, False):
            out = generate(model, [5, 6], [3, 4], sampler(*stages), use_cache=use_cache)
            assert torch.equal(out['tokens'], ref), (stages, use_cache)


STATIC_CASES = [  # (stages, model): drafts and refines in both orders, small blocks in a refine, schedules the
    [Stage(4)], [Stage(4, order='confidence')], [Stage(4), Stage(32, 0.25)],  # static reveal does not cover (exact)
    [Stage(4, order='confidence'), Stage(32, 0.5, order='confidence')], [Stage(8), Stage(4, 0.5, order='confidence')],
    [Stage(8), Stage(4, 0.75)], [Stage(4, order='confidence', steps=2), Stage(32, 0.25, order='confidence', threshold=0.5)]]


@pytest.mark.parametrize('stages', STATIC_CASES, ids=lambda s: ','.join(f"{x.block_size}{x.order[0]}" for x in s))
@pytest.mark.parametrize('V,std', [(40, 0.3), (1500, 0.5), (1500, 0.02)])
def test_static_steps_give_the_eager_tokens(stages, V, std, monkeypatch):
    """fast.py's static-shape pieces, uncompiled (their logic; the compiled ones are checked below): token for token
    the eager sampler, with the same confidences, forward counts and hook events, in a batch of three whose rows have
    different masked counts in a refine's small blocks. V=40: every nucleus is within the first reach (64), and every
    block with more than half its positions masked is one draft_block call; V=1500, std 0.5: nuclei of hundreds, the
    first block is redone with a reach of 1024, which holds them; std 0.02: flat, longer than 1024, every block falls
    back to fill's exact rules."""
    from fast import StaticBlockForward, compiled_steps
    model = tiny_model(V=V, std=std)
    fused, fill_block = [], StaticBlockForward.fill_block
    monkeypatch.setattr(StaticBlockForward, 'fill_block', lambda *a: fused.append(fill_block(*a)) or fused[-1])
    steps = compiled_steps(model, compile=False)
    seen = {}
    hook = lambda name: lambda event, k, d: seen.setdefault(name, []).append((event, k, *(t.clone() for t in (d if event == 'reveal' else (d,)))))
    ref = generate(model, [5, 6], [3, 4, 5], sampler(*stages, top_p=0.9), hook=hook('ref'))
    out = generate(model, [5, 6], [3, 4, 5], sampler(*stages, top_p=0.9), steps=steps, hook=hook('out'))
    assert torch.equal(out['tokens'], ref['tokens'])
    assert torch.allclose(out['conf'], ref['conf'], rtol=1e-12)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(out['stats'], ref['stats']) for k in a)
    assert len(seen['out']) == len(seen['ref'])  # every forward's reveal, with x and conf as they were after it
    for a, b in zip(seen['out'], seen['ref']):
        assert a[:2] == b[:2] and all(torch.allclose(p.double(), q.double(), rtol=1e-12) for p, q in zip(a[2:], b[2:]))
    one_token = any(s.block_size < 32 and s.steps is None and s.threshold is None for s in stages)
    assert (sum(fused) > 0) == (one_token and std > 0.02) and steps['top'][0] == (1024 if one_token and V > 64 else 64)


def test_sample_tokens_static_equals_sample_tokens_and_flags_long_nuclei():
    """Rows with nuclei of every length (a few tokens, hundreds, all 1500): the static draw over the top 64 or 1024
    gives sample_tokens' token and probability wherever it says ok, and says not ok exactly where the nucleus is
    longer than its reach."""
    from did import sample_tokens
    from fast import sample_tokens_static
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1500, generator=g, dtype=torch.float64) * torch.tensor([8.0, 3.0, 1.0, 0.3, 0.0, 5.0])[:, None]
    u = torch.rand(6, generator=g, dtype=torch.float64)
    flagged = set()
    for nucleus, T, top_p in (('standard', 1.0, 0.9), ('bd3lm', 0.7, 0.9), ('standard', 1.3, 0.5), ('bd3lm', 0.0, 0.9), ('standard', 1.0, 1.0)):
        tok, p = sample_tokens(logits, u, top_p, T, nucleus)
        probs = F.softmax(logits / (T or 1.0), -1).sort(-1, descending=True).values
        size = ((probs.cumsum(-1) - probs) < top_p).sum(-1) if 0 < top_p < 1 and T > 0 else torch.zeros(6)
        for top in (64, 1024):
            tok_s, p_s, ok = sample_tokens_static(logits, u, top_p, T, nucleus, top)
            assert torch.equal(ok, size <= top), (nucleus, T, top_p, top)
            assert torch.equal(tok_s[ok], tok[ok]) and torch.equal(p_s[ok], p[ok])
            flagged |= {(top, i) for i in (~ok).nonzero().flatten().tolist()}
    assert {(64, 2), (64, 4), (1024, 4)} <= flagged  # nuclei of hundreds and of 1350 tokens were among them


@pytest.mark.slow
def test_compiled_sampler_gives_the_eager_tokens():
    """torch.compile'd static steps (on the CPU: inductor's C++ kernels) against the eager sampler: the same tokens
    for drafts and refines, random and confidence order, in a batch of two; confidences to float32 rounding."""
    from fast import compiled_steps
    model = tiny_model(L=32, V=40, n_layer=1).float()  # one layer: the graphs' logic at half the compile time
    steps = compiled_steps(model)
    assert compiled_steps(model) is steps  # compiled once per model
    for stages in ([Stage(4), Stage(32, 0.25)], [Stage(4, order='confidence'), Stage(32, 0.25, order='confidence')]):
        ref = generate(model, [5], [3, 4], sampler(*stages))
        for _ in range(2):  # the second call reuses the graphs and the cache tensors
            out = generate(model, [5], [3, 4], sampler(*stages), steps=steps)
            assert torch.equal(out['tokens'], ref['tokens']), stages
            assert torch.allclose(out['conf'], ref['conf'], atol=1e-5)


class KnownModel(torch.nn.Module):
    """A stand-in whose output distribution at position t we choose: its 'hidden state' is the position and its
    head reads a table (L, V) of log-probabilities. It records the tokens it is shown at every forward."""

    def __init__(self, table):
        super().__init__()
        self.config = DiDConfig(seq_len=table.size(0), vocab_size=table.size(1), n_layer=1, n_head=1, n_embd=2)
        self.lm_head = torch.nn.Linear(1, table.size(1)).double()
        self.table, self.seen = table, []

    def hidden(self, idx, pos, attn_mask=None, is_causal=False, cache=None, n_out=None):
        self.seen.append(idx.clone())
        return pos.expand(idx.shape)[..., None].double()  # (B, T, 1)

    def logits(self, h, weight_t=None):
        out = self.table[h[..., 0].long()].clone()
        out[..., self.config.mask_id:] = float('-inf')
        return out


def test_confidence_order_and_threshold_reveal_what_they_claim():
    """Greedy draws (temperature 0) from known distributions: the probability of position t's draw is q[t]. The
    k-most-confident rule must reveal the k highest q first; the threshold rule every q >= tau (at least one)."""
    L, V = 16, 6
    q = torch.tensor([1.0, .9, .32, .8, .33, .7, .95, .31, .6, .4, .85, .5, .34, .65, .55, .36], dtype=torch.float64)
    table = ((1 - q[:, None]) / 4).clamp_min(1e-12).log().expand(L, V).clone()  # tokens 1..4: (1 - q) / 4 each
    table[:, 0] = q.log()  # token 0, the most likely, with probability q[t]
    model = KnownModel(table)
    out = generate(model, [2], [0], sampler(Stage(16, order='confidence', steps=3), temperature=0))
    firsts = [(~(a == 5)) & (b == 5) for a, b in zip(model.seen[1:], model.seen)]  # revealed between forwards
    order = q[1:].argsort(descending=True) + 1  # the 15 generated positions, most confident first
    assert torch.equal(firsts[0][0].nonzero().flatten().sort().values, order[:5].sort().values)  # 15 over 3 steps
    assert torch.equal(firsts[1][0].nonzero().flatten().sort().values, order[5:10].sort().values)
    assert torch.allclose(out['conf'][0, 1:], q[1:]) and (out['tokens'][0, 1:] == 0).all()
    model.seen = []
    out = generate(model, [2], [0], sampler(Stage(16, order='confidence', threshold=0.69), temperature=0))
    step1 = (model.seen[1][0] != 5) & (model.seen[0][0] == 5)
    assert torch.equal(step1.nonzero().flatten(), (q >= 0.69).nonzero().flatten()[1:])  # all >= 0.69, prompt aside
    assert len(model.seen) == 1 + (q[1:] < 0.69).sum()  # then one per forward: nothing else reaches 0.69
    assert counts(out['stats'][0]) == [dict(nfe=len(model.seen), cache_passes=0, token_forwards=16 * len(model.seen))]


@pytest.mark.parametrize('opts', [dict(order='confidence'), dict(order='confidence', steps=2),
                                  dict(order='confidence', threshold=0.2), dict(refresh=3), dict(refresh=100, steps=4),
                                  dict(order='confidence', threshold=0.2, refresh=2), dict(refresh=0, steps=4, order='confidence')])
def test_every_schedule_fills_everything_keeps_the_prompt_and_counts_per_row(opts):
    model = tiny_model()
    prompt = [3, 7, 11]
    draft = {k: v for k, v in opts.items() if k != 'refresh'}  # refresh is for global stages
    out = generate(model, prompt, [0, 1, 2], sampler(Stage(4, **draft), Stage(32, 0.5, **opts)))
    assert not (out['tokens'] == 39).any() and (out['tokens'][:, :3] == torch.tensor(prompt)).all()
    assert torch.equal(out['history'][0][:, :3], out['tokens'][:, :3])
    r = math.floor(0.5 * 29)
    for k, st in enumerate(out['stats']):
        n = st['nfe']
        assert ((1 <= n) & (n <= (29 if k == 0 else r))).all()  # at least one forward, at most one per token
        if opts.get('steps'):  # a step that has nothing to reveal for a row is no forward of that row
            assert (n == (1 + 7 * min(opts['steps'], 4) if k == 0 else opts['steps'])).all()
        if k and 'refresh' in opts:  # refreshes run all 32 positions, the other steps only the r remasked ones
            full = (n + opts['refresh'] - 1) // opts['refresh'] if opts['refresh'] else torch.ones_like(n)  # 0: the first only
            assert torch.equal(st['token_forwards'], full * 32 + (n - full) * r)


def test_refine_cache_partial_forward_equals_the_full_one_when_nothing_changed():
    """Right after a full forward, a forward over some positions alone, against the cached keys and values of
    the rest, gives those positions exactly what the full forward gave them (rotary positions per row)."""
    from did import ActiveKV, StaleKV
    model = tiny_model()
    x = torch.randint(0, 40, (3, 32))
    stale = StaleKV(model.config.n_layer)
    full = model.hidden(x, torch.arange(32), cache=stale)
    idx = torch.stack([torch.randperm(32)[:9].sort().values for _ in range(3)])  # (3, 9), different per row
    part = model.hidden(x.gather(1, idx), idx, cache=ActiveKV(stale, idx))
    assert torch.allclose(part, full.gather(1, idx[..., None].expand(-1, -1, full.size(-1))), rtol=1e-10, atol=1e-12)
    # refresh=0 reuses the first full forward's keys/values for the whole stage: what any r beyond the stage's length does
    stages = lambda r: sampler(Stage(4), Stage(32, 0.5, refresh=r, order='confidence'))
    assert torch.equal(generate(model, [5], [0, 1], stages(0))['tokens'], generate(model, [5], [0, 1], stages(1000))['tokens'])


def test_sampling_is_seeded_and_batch_invariant():
    model = tiny_model()
    stages = sampler(Stage(4), Stage(32, 0.5))
    a = generate(model, [5], [10, 11, 12], stages)
    b = generate(model, [5], [10, 11, 12], stages)
    assert torch.equal(a['tokens'], b['tokens'])
    for i, s in enumerate([10, 11, 12]):  # each sequence alone: the same tokens (RNG is per sequence)
        one = generate(model, [5], [s], stages)
        assert torch.equal(one['tokens'][0], a['tokens'][i])
        assert torch.equal(one['remasked'][1][0], a['remasked'][1][i])
    assert not torch.equal(a['tokens'][0], a['tokens'][1])


def test_ar_sampler_draws_each_token_from_the_causal_model_given_the_prefix():
    """generate_ar against a slow loop: greedy picks the argmax of the causal logits at every step; with
    temperature 1 and no nucleus each token is the inverse-CDF draw of its row's own generator; batch invariant."""
    from did import generate_ar
    model = tiny_model(L=16, V=12)
    greedy = generate_ar(model, [11 - 1], [0, 1], sampler(temperature=0))['tokens']
    for i in range(1, 16):
        h = model.hidden(greedy[:, :i], torch.arange(i), is_causal=True)
        assert torch.equal(greedy[:, i], model.logits(h[:, -1])[:, :11].argmax(-1))
    res = generate_ar(model, [10], [5, 6, 7], sampler(top_p=1.0))
    x = torch.full((1, 16), 10)
    gen = torch.Generator().manual_seed(6)
    for i in range(1, 16):
        p = F.softmax(model.logits(model.hidden(x[:, :i], torch.arange(i), is_causal=True)[:, -1])[:, :11], -1)
        u = torch.rand(1, generator=gen)
        x[0, i] = int((p.cumsum(-1) < u * p.sum()).sum())
        assert torch.allclose(res['conf'][1, i], p[0, x[0, i]].float(), atol=1e-6)
    assert torch.equal(res['tokens'][1], x[0]) and (res['tokens'] < 11).all()  # never MASK
    assert torch.equal(generate_ar(model, [10], [6], sampler(top_p=1.0))['tokens'][0], x[0])


def test_sampler_bad_input():
    model = tiny_model()
    assert not (generate(model, [1], [0])['tokens'] == 39).any()  # the paper's sampler, the default, fits any L (here 32)
    assert PAPER == Sampling() and PAPER.at(32) == [Stage(4, 1.0, 'random'), Stage(32, 0.25, 'random')] and PAPER.nucleus == 'bd3lm'
    for stages, prompt, remask, msg in [([Stage(5)], [1], 'snapshot', 'does not divide'),
                                        ([Stage(4), Stage(32, 1.5)], [1], 'snapshot', 'outside'),
                                        ([Stage(4, 0.5)], [1], 'snapshot', 'first stage'),
                                        ([Stage(4)], [1] * 32, 'snapshot', 'prompt'),
                                        ([Stage(4), Stage(32, 0.2)], [1], 'best', 'unknown remask'),
                                        ([Stage(4), Stage(32, 0.2, refresh=-1)], [1], 'snapshot', 'refreshed every'),
                                        ([(4, 1.0)], [1], 'snapshot', 'list of Stage'),
                                        ([Stage(4, threshold=0.9, steps=2)], [1], 'snapshot', 'no steps'),
                                        ([Stage(4, threshold=0.9, order='random')], [1], 'snapshot', "order='confidence'"),
                                        ([Stage(4, refresh=4)], [1], 'snapshot', 'applies to global stages')]:
        with pytest.raises(ValueError, match=msg):
            generate(model, prompt, [0], sampler(*stages, remask=remask))


# -----------------------------------------------------------------------------
# beyond the paper's fixed length: any length, infilling

def reference_long(model, prompt, seed, max_len, bs=4):
    """generate_long's draft written the slow way for one sequence: each step runs the block's whole window through
    the block-causal mask (no cache) and reveals one random position, as reference_sample does. The window is the
    sequence so far until it would pass L; then prompt[0] and the last L/2 - 1 tokens, and so on."""
    from did import sample_tokens
    L, mask_id, W = model.config.seq_len, model.config.mask_id, model.config.seq_len // 2
    g = torch.Generator().manual_seed(seed)
    x = torch.full((max_len,), mask_id, dtype=torch.long)
    x[:len(prompt)] = torch.tensor(prompt)
    off = 0
    for a in range(0, max_len, bs):
        if a - off + bs > L:
            off = a - W
        while (x[a:a + bs] == mask_id).any():
            u = torch.rand(2, bs, generator=g)
            j = torch.where(x[a:a + bs] == mask_id, u[0], -1.0).argmax().item()
            win = x[:a + bs] if off == 0 else torch.cat([x[:1], x[off + 1:a + bs]])
            h = model.hidden(win[None], torch.arange(len(win)), attn_mask=block_causal_mask(L, bs)[:len(win), :len(win)])
            tok, p = sample_tokens(model.logits(h[0, a - off + j][None]), u[1, j:j + 1])
            x[a + j] = tok.item()
    return x


def test_long_generation_equals_generate_at_L_and_a_slow_reference_beyond():
    from beyond import generate_long
    model = tiny_model()
    stages = sampler(Stage(4), Stage(32, 0.25))
    fixed = generate(model, [5, 6], [3, 4], stages)
    long = generate_long(model, [5, 6], [3, 4], 32, stages)  # max_len = L: the same sampler
    for i in range(2):
        assert long[i]['tokens'] == fixed['tokens'][i].tolist() and long[i]['draft'] == fixed['history'][0][i].tolist()
        assert sorted(long[i]['remasked']) == fixed['remasked'][1][i].nonzero().flatten().tolist()
    # 2.5 L: three window rebuilds, token for token the slow reference
    long = generate_long(model, [5, 6], [3, 4], 80, sampler(Stage(4)))
    for i, s in enumerate((3, 4)):
        assert long[i]['tokens'] == reference_long(model, [5, 6], s, 80).tolist()


def test_long_generation_stops_at_eos_and_refines_window_by_window():
    from beyond import generate_long
    model = tiny_model()
    draft = generate(model, [5], list(range(12)), sampler(Stage(4)))['tokens']
    eos = 7  # some drafts write it: those rows stop there, the same as the fixed-length draft up to it
    long = generate_long(model, [5], list(range(12)), 32, sampler(Stage(4)), stop=eos)
    stopped = 0
    for i, r in enumerate(long):
        row = draft[i].tolist()
        end = row.index(eos, 1) + 1 if eos in row[1:] else 32
        assert r['tokens'] == row[:end]
        stopped += end < 32
    assert stopped >= 2
    # a long refine remasks gamma of each window's own generated tokens: [0, 32), then 31 at a time after prompt[0]
    long = generate_long(model, [5, 6], [1, 2], 100, sampler(Stage(4), Stage(32, 0.5)))
    for r in long:
        assert len(r['tokens']) == 100 and len(r['remasked']) == len(set(r['remasked']))
        for a, b, n in ((0, 32, 30), (32, 63, 31), (63, 94, 31), (94, 100, 6)):
            assert sum(a <= j < b for j in r['remasked']) == n // 2  # floor(0.5 n), none of them the prompt
        assert all(t == d for j, (t, d) in enumerate(zip(r['tokens'], r['draft'])) if j not in r['remasked'])
        assert 0 not in r['remasked'] and 1 not in r['remasked']


def test_infill_keeps_the_text_and_the_global_stage_sees_both_sides():
    """Holes are filled and nothing else changes; the global stage's fill depends on text after a hole, a
    left-to-right block draft's does not (its blocks see only what precedes them)."""
    from beyond import infill
    model = tiny_model()
    a = [5, 1, 2, 39, 39, 39, 39, 3, 4, 8, 9, 10, 11, 12, 13, 14]  # MASK (39) at the hole
    b = a[:8] + [20, 21, 22, 23, 24, 25, 26, 27]  # the same text before and at the hole, another after it
    seeds = list(range(8))
    C = dict(order='confidence')
    for stages in ([Stage(16, **C)], [Stage(16, **C), Stage(16, 0.5, **C)], [Stage(4, **C)]):
        for ids in (a, b):
            out = infill(model, ids, seeds, sampler(*stages))
            fixed = torch.tensor(ids) != 39
            assert (out['tokens'][:, fixed] == torch.tensor(ids)[fixed]).all() and not (out['tokens'] == 39).any()
            if len(stages) > 1:
                assert (out['remasked'][1].sum(1) == 2).all() and not out['remasked'][1][:, fixed].any()
    glob = [infill(model, ids, seeds, sampler(Stage(16, **C)))['tokens'][:, 3:7] for ids in (a, b)]
    l2r = [infill(model, ids, seeds, sampler(Stage(4, **C)))['tokens'][:, 3:7] for ids in (a, b)]
    assert not torch.equal(glob[0], glob[1]) and torch.equal(l2r[0], l2r[1])
    with pytest.raises(ValueError, match='no MASK'):
        infill(model, [5, 1, 2, 3], [0], sampler(Stage(4)))


# -----------------------------------------------------------------------------
# judging samples: Gen PPL, entropy, global coherence

def test_gen_ppl_matches_hand_computation():
    from judge import gen_ppl, sample_nll, unigram_entropy
    V, eos = 6, 5
    # a judge whose prediction at row r of its input window puts logit r + 1 on the token at that row: the
    # numbers depend on where each window starts, so the windowing is checked too
    def logits_fn(ids):
        out = torch.zeros(len(ids), V, dtype=torch.float64)
        out[torch.arange(len(ids)), ids] = torch.arange(len(ids), dtype=torch.float64) + 1
        return out
    def logp(window, r, target):  # log-softmax by hand
        z = [0.0] * V
        z[window[r]] = r + 1.0
        return z[target] - math.log(sum(math.exp(v) for v in z))
    ids = [eos, 1, 2, 5, 3, 1, 4]  # the eos target at position 3 is excluded; position 0 is never scored
    # ctx_len 4, stride 2: window [0,4) scores targets 1..3, window [2,6) targets 4..5, window [4,7) target 6
    expected = [(1, 0, 0), (2, 0, 1), (4, 2, 1), (5, 2, 2), (6, 4, 1)]  # (target position, window start, row)
    nll = -sum(logp(ids[b:b + 4], r, ids[j]) for j, b, r in expected)
    got_nll, count = sample_nll(logits_fn, torch.tensor(ids), eos, ctx_len=4)
    assert count == 5 and abs(got_nll - nll) < 1e-12
    # without windowing (long context) each target is read at row j - 1 of one window
    nll_full = -sum(logp(ids, j - 1, ids[j]) for j in (1, 2, 4, 5, 6))
    assert abs(sample_nll(logits_fn, torch.tensor(ids), eos, ctx_len=64)[0] - nll_full) < 1e-12
    # the mean of per-sample perplexities, and the token-weighted one
    other = [eos, 2, 2]
    n2 = -sum(logp(other, j - 1, other[j]) for j in (1, 2))
    mean, std, weighted, per = gen_ppl(logits_fn, [ids, other], eos, ctx_len=64)
    assert abs(mean - (math.exp(nll_full / 5) + math.exp(n2 / 2)) / 2) < 1e-9
    assert abs(weighted - math.exp((nll_full + n2) / 7)) < 1e-9
    # unigram entropy in nats
    assert abs(unigram_entropy([1, 1, 2, 3]) - -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))) < 1e-12


def test_gen_ppl_skips_samples_with_nothing_to_score():
    """A sample whose every target is EOS has no perplexity: BD3-LM's NaN-skipping mean leaves it out (it would
    otherwise enter as 1.0); the clean-up of Hugging Face's batch_decode is applied as transformers 4.38 did."""
    from judge import clean_up_tokenization, gen_ppl
    V, eos = 6, 5
    logits_fn = lambda ids: torch.zeros(len(ids), V, dtype=torch.float64)  # noqa: E731  uniform: PPL 6
    mean, std, weighted, per = gen_ppl(logits_fn, [[eos, 1, 2], [eos, eos, eos], [eos, 3, 4, 1]], eos, ctx_len=64)
    assert abs(mean - 6.0) < 1e-9 and std < 1e-9 and abs(weighted - 6.0) < 1e-9 and math.isnan(per[1])
    text = "He said ' hi ' , and they 're here . Is n't it ? I 'm sure it 's ok , we 've won !"
    # in order: " ," goes before " ' " is looked for, so the second quote keeps its space
    assert clean_up_tokenization(text) == "He said'hi ', and they're here. Isn't it? I'm sure it's ok, we've won!"
    transformers = pytest.importorskip('transformers')  # the same rules as Hugging Face's (static in 4.38, a method in 5)
    assert clean_up_tokenization(text) == transformers.PreTrainedTokenizerBase.clean_up_tokenization(None, text)


def test_coherence_tells_real_stories_from_spliced_ones():
    """The two global-coherence measures on real TinyStories stories and on stories spliced from two (the first
    half of one, the second half of another): the judge's mutual information between a story's halves, and the
    share of the second half's names that the first half introduced. The judge is a cache LM (a token's
    probability grows with its count in the context): what a causal judge does with context, at no training cost."""
    import judge
    path = os.path.join(SHARED, 'text', 'tinystories', 'tinystories.txt')
    if not os.path.exists(path):
        pytest.skip('the TinyStories copy in ../shared is not here')
    stories = [s.strip() for s in open(path, encoding='utf-8').read().split('<|endoftext|>') if len(s.split()) > 80][-120:]
    n, mid = len(stories), [s.find(' ', len(s) // 2) for s in stories]
    spliced = [stories[i][:mid[i]] + stories[(i + n // 2) % n][mid[(i + n // 2) % n]:] for i in range(n)]
    words = lambda s: re.findall(r"\w+|[^\w\s]", s)
    vocab = {w: i + 1 for i, w in enumerate(sorted({w for s in stories for w in words(s)}))}  # 0: the start token
    unigram = torch.ones(len(vocab) + 1, dtype=torch.float64)
    for s in stories:
        for w in words(s):
            unigram[vocab[w]] += 1
    unigram /= unigram.sum()

    def cache_lm(ids):  # (T,) -> (T, V): p(next) = (count in the context so far + 20 unigram) / (length + 20)
        counts = F.one_hot(ids, len(unigram)).double().cumsum(0)
        return ((counts + 20 * unigram) / (torch.arange(1, len(ids) + 1)[:, None] + 20)).log()

    def measure(texts):
        mi = np.array(judge.halves_mi(cache_lm, [[0] + [vocab[w] for w in words(t)] for t in texts], 0))
        share = np.array([judge.name_share(t) for t in texts])
        share = share[~np.isnan(share)]
        return mi.mean(), mi.std() / math.sqrt(len(mi)), share.mean(), share.std() / math.sqrt(len(share))
    mi_real, se_real, names_real, nse_real = measure(stories)
    mi_spliced, se_spliced, names_spliced, nse_spliced = measure(spliced)
    assert mi_real - mi_spliced > 5 * math.hypot(se_real, se_spliced) and mi_real > 2 * mi_spliced
    assert names_real - names_spliced > 5 * math.hypot(nse_real, nse_spliced) and names_real > 0.9
    # and the measures see nothing where there is nothing: a sample paired with an identical one; and a judge that
    # reads only the previous token (local by construction) finds no information between halves, however fluent
    # the join: the second half's first tokens are context on both sides
    assert judge.halves_mi(cache_lm, [[0] + [vocab[w] for w in words(stories[0])]] * 2, 0) == [0.0, 0.0]
    table = torch.randn(len(unigram), len(unigram), dtype=torch.float64).log_softmax(-1)
    mi = judge.halves_mi(lambda ids: table[ids], [[0] + [vocab[w] for w in words(t)] for t in stories[:20]], 0)
    assert np.allclose(mi, 0.0, atol=1e-9)
    assert np.isnan(judge.halves_mi(cache_lm, [[0, 1, 2, 3]], 0)).all()  # one sample: nothing to pair it with


def test_names_are_the_capitalized_words_inside_sentences():
    import judge
    text = 'Once upon a time, a girl named Lily met Tom. "Hello, Tom!" said Lily. Then Max came.\nMax waved.'
    assert judge.names(text) == {'Lily', 'Tom', 'Max'}
    assert judge.names(text, anywhere=True) == {'Lily', 'Tom', 'Max', 'Hello'}
    assert judge.name_share('Lily and Tom played. Then they ate. Later Tom slept and Sam came.') == 0.5
    assert judge.names('The end.<|endoftext|>Lily was happy with Tom.') == {'Tom'}  # a story's first word starts it


def test_real_word_rate_by_hand():
    """Words are lowercased runs of letters; the rate is the share of a sample's words found in the vocabulary."""
    from judge import real_word_rate, words
    vocab = set(words("To be, or not to be: that is the question.\nWhether 'tis nobler"))
    assert vocab == {'to', 'be', 'or', 'not', 'that', 'is', 'the', 'question', 'whether', 'tis', 'nobler'}
    # words: to, be, xq, the, qvestion, nobler, o, tis -> 5 of 8 are real (xq, qvestion, o are not)
    assert real_word_rate("TO be, xq!the QVESTION--nobler o'tis 42", vocab) == 5 / 8
    assert real_word_rate("<|endoftext|>To be<|endoftext|>xq", vocab) == 2 / 3  # the EOT token's letters are no word
    assert math.isnan(real_word_rate("123 ... !", vocab))


def test_gen_ppl_at_matched_entropy_on_a_synthetic_frontier():
    """On a frontier where log Gen PPL is linear in entropy, the interpolated value is exact, the bootstrap of
    identical samples has zero spread, a constant factor between two curves is their paired difference, and an
    entropy outside the sweep gives NaN rather than an extrapolation."""
    from judge import at_entropy, boot_se, matched_entropy
    n = 8
    def curve(a, b, hs):  # one row per temperature: every sample at entropy h, Gen PPL exp(a + b h)
        return [dict(entropies=[h] * n, gen_ppls=[math.exp(a + b * h)] * n) for h in hs]
    hs = [2.6, 2.8, 3.0, 3.2, 3.4]
    assert at_entropy(curve(1.0, 0.5, hs), 3.1) == pytest.approx(math.exp(1.0 + 0.5 * 3.1), rel=1e-12)
    assert at_entropy(curve(1.0, 0.5, hs[::-1]), 2.9) == pytest.approx(math.exp(1.0 + 0.5 * 2.9), rel=1e-12)
    assert math.isnan(at_entropy(curve(1.0, 0.5, hs), 3.5)) and math.isnan(at_entropy(curve(1.0, 0.5, hs), 2.5))
    # between two points of a curve that is not log-linear: linear in log Gen PPL between the neighbours
    bent = [dict(entropies=[h] * n, gen_ppls=[p] * n) for h, p in ((3.0, 10.0), (3.2, 20.0), (3.4, 80.0))]
    assert at_entropy(bent, 3.25) == pytest.approx(math.exp(math.log(20) + 0.25 * math.log(4)), rel=1e-12)
    est, draws = matched_entropy({'a': curve(1.0, 0.5, hs), 'b': curve(1.0 + math.log(2), 0.5, hs)}, 3.1, n_boot=50)
    assert est['b'] - est['a'] == pytest.approx(math.exp(1.0 + 0.5 * 3.1), rel=1e-9)  # b is twice a
    assert boot_se(draws['a']) == pytest.approx(0.0, abs=1e-9)
    # samples that differ: the bootstrap spread is about the standard error of the mean
    rng = np.random.default_rng(0)
    noisy = [dict(entropies=list(h + 0.1 * rng.standard_normal(400)), gen_ppls=list(10 * h + rng.standard_normal(400)))
             for h in (3.0, 3.2)]
    est, draws = matched_entropy({'c': noisy}, 3.1, n_boot=300)
    assert est['c'] == pytest.approx(31, rel=0.02) and 0.02 < boot_se(draws['c']) < 0.2
    # a target taken from a row is resampled with it: a curve read off at its own point is that point in every draw
    est, draws = matched_entropy({'c': noisy}, noisy[0], n_boot=300)
    assert est['c'] == pytest.approx(np.mean(noisy[0]['gen_ppls']), rel=1e-12) and boot_se(draws['c']) > 0


def test_quickstart_compare_reads_each_model_at_real_texts_entropy(tmp_path):
    """ablation-tinystories/quickstart.py on rows already made (reused, nothing sampled): each model's draft and
    refine read off at real text's entropy, the differences paired; a row from another checkpoint or sampled in another
    order is refused without --overwrite; a sweep that misses real text's entropy is an error, not a NaN in the table."""
    n = 4
    abl = tmp_path / 'abl'
    os.makedirs(abl / 'judge-x')
    json.dump(dict(settings=dict(num_samples=n, sample_seed=1337, gamma=0.25), rows=[dict(judge='judge-x/ckpt.pt')],
                   real_text=dict(entropy=4.3, gen_ppl=13.0, mi=0.04, name_share=0.34), spliced_text=dict(mi=0.0, name_share=0.1)),
              open(abl / 'results.json', 'w'))
    def rows(name, ppl, mi, hs=(4.0, 4.6), iter_num=7, order='random', folder='random', posthoc=False):  # each sample at
        os.makedirs(tmp_path / name, exist_ok=True)                              # entropy h: Gen PPL ppl[i], MI mi[i]
        torch.save(dict(iter_num=iter_num), tmp_path / name / 'ckpt.pt')
        os.makedirs(abl / 'quickstart' / folder, exist_ok=True)
        refine = ('4:1.0,L:0.25', f'4:1.0:order={order}:refresh=1,256:0.25:order={order}:refresh=1')
        for stage, (st, run), f, remask in (('draft', ('4:1.0', f'4:1.0:order={order}:refresh=1'), 1.0, 'snapshot'),
                                            ('refine', refine, 2.0, 'snapshot'), ('refine_posthoc', refine, 3.0, 'posthoc'))[:3 if posthoc else 2]:
            for T, h, p, m in zip((0.8, 1.0), hs, ppl, mi):
                json.dump(dict(stages=st, stages_run=run, remask=remask, temperature=T, num_samples=n, seed=1337, checkpoint=str(tmp_path / name / 'ckpt.pt'),
                               iter_num=7, judge=str(abl / 'judge-x'), entropy=h, entropies=[h] * n, gen_ppls=[f * p] * n,
                               mis=[m] * n, name_shares=[0.5] * n), open(abl / 'quickstart' / folder / f'{name}_{stage}_T{T:g}.json', 'w'))
    rows('qs', (10.0, 40.0), (0.0, 0.06))
    rows('old', (20.0, 80.0), (0.0, 0.02))
    cmd = [sys.executable, os.path.join(ROOT, 'ablation-tinystories', 'quickstart.py'), '--out_dir=abl',
           "--models={'qs': 'qs', 'old': 'old'}", '--temperatures=[0.8, 1.0]']
    p = run_here(cmd, tmp_path)
    assert p.returncode == 0 and 'sampling' not in p.stdout, p.stderr
    r = json.load(open(abl / 'quickstart' / 'random' / 'compare.json'))
    t = {(x['model'], x['stage']): x for x in r['table']}
    assert t['qs', 'draft']['gen_ppls'][0] == pytest.approx(20.0, rel=1e-9)  # log-linear halfway: sqrt(10 * 40)
    assert t['qs', 'refine']['gen_ppls'][0] == pytest.approx(40.0, rel=1e-9) and t['qs', 'draft']['gen_ppls'][1] < 1e-9
    assert t['qs', 'draft']['mis'][0] == pytest.approx(0.03) and t['old', 'draft']['mis'][0] == pytest.approx(0.01)
    d = {(x['model'], x['stage'], x['minus']): x for x in r['differences']}
    assert d['old', 'draft', 'qs']['gen_ppls'][0] == pytest.approx(20.0) and d['old', 'draft', 'qs']['mis'][0] == pytest.approx(-0.02)
    assert d['qs', 'refine', 'draft']['gen_ppls'][0] == pytest.approx(20.0)
    p = run_here(cmd, tmp_path)  # compare.json exists
    assert p.returncode == 1 and 'compare.json exists' in p.stderr
    for name in ('qs', 'old'):  # confidence order: its own rows and table, beside random order's
        rows(name, (10.0, 40.0), (0.0, 0.06), order='confidence', folder='confidence')
    p = run_here(cmd + ['--order=confidence'], tmp_path)
    r = json.load(open(abl / 'quickstart' / 'confidence' / 'compare.json'))
    assert p.returncode == 0 and 'sampling' not in p.stdout and r['order'] == 'confidence', p.stderr
    assert {(x['model'], x['stage'], x['minus']): x['gen_ppls'][0] for x in r['differences']}['old', 'draft', 'qs'] == pytest.approx(0)
    os.remove(abl / 'quickstart' / 'random' / 'compare.json')
    os.remove(tmp_path / 'old' / 'ckpt.pt')  # a model of ours in a clone: its rows alone, from whatever checkpoint made them
    p = run_here(cmd, tmp_path)
    assert p.returncode == 0 and 'sampling' not in p.stdout and 'old: old/ckpt.pt not found: reading its rows' in p.stdout, p.stderr
    os.remove(abl / 'quickstart' / 'random' / 'compare.json')
    os.remove(abl / 'quickstart' / 'random' / 'old_refine_T1.json')  # ... and none missing
    p = run_here(cmd, tmp_path)
    assert p.returncode == 1 and 'old/ckpt.pt (old) not found, and no row' in p.stderr and 'old_refine_T1.json' in p.stderr, p.stderr
    rows('old', (20.0, 80.0), (0.0, 0.02), order='confidence')  # rows from other settings, and no checkpoint to remake them
    os.remove(tmp_path / 'old' / 'ckpt.pt')
    p = run_here(cmd + ['--overwrite=True'], tmp_path)
    assert p.returncode == 1 and 'old/ckpt.pt (old) is not here to remake it' in p.stderr and 'sampling' not in p.stdout, p.stderr
    for kw in (dict(iter_num=8), dict(order='confidence')):  # retrained, or sampled in another order than its folder's
        rows('old', (20.0, 80.0), (0.0, 0.02), **kw)
        p = run_here(cmd, tmp_path)
        assert p.returncode == 1 and 'old_draft_T0.8.json holds a row from another checkpoint' in p.stderr, p.stderr
    rows('qs', (10.0, 40.0), (0.0, 0.06), posthoc=True)  # the paper's ablation: the refine with a posthoc remasking
    rows('old', (20.0, 80.0), (0.0, 0.02), posthoc=True)
    p = run_here(cmd + ["--remasks=['snapshot', 'posthoc']"], tmp_path)
    d = {(x['model'], x['stage'], x['minus']): x['gen_ppls'][0] for x in json.load(open(abl / 'quickstart' / 'random' / 'compare.json'))['differences']}
    assert p.returncode == 0 and 'sampling' not in p.stdout, p.stderr
    assert d['qs', 'refine_posthoc', 'draft'] == pytest.approx(40.0) and d['qs', 'refine', 'refine_posthoc'] == pytest.approx(-20.0)
    os.remove(abl / 'quickstart' / 'random' / 'compare.json')
    rows('old', (20.0, 80.0), (0.0, 0.02), hs=(4.4, 4.6))  # the sweep's entropies lie above real text's
    p = run_here(cmd, tmp_path)
    assert p.returncode == 1 and "miss real text's 4.300" in p.stderr, p.stderr
    assert not os.path.exists(abl / 'quickstart' / 'random' / 'compare.json')

# -----------------------------------------------------------------------------
# the GPU paths, on the CPU: a fake accelerator, bf16, FlexAttention, compilation, MFU

def fake_accelerator():
    """A FakeTensorMode and a function that moves a real tensor onto a fake accelerator: CUDA where this PyTorch has
    CUDA, else the meta device (a CPU-only build cannot index fake CUDA tensors: its device guards need CUDA). Any
    CPU tensor that meets an accelerator tensor then fails as it would on a GPU (FakeTensorDeviceMismatchError);
    shapes that depend on data (boolean masks) work, their values (.item(), bool()) do not."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=True, allow_non_fake_inputs=True)
    dev = torch.device('cuda:0' if torch.backends.cuda.is_built() else 'meta')
    return mode, lambda x: FakeTensor(mode, x.detach().to('meta'), dev)


@pytest.fixture
def fresh_masks():
    """The cached masks built under a fake mode must not leak into other tests."""
    yield
    from did import block_causal_mask, block_diff_mask
    for f in (block_diff_mask, block_causal_mask):
        f.__wrapped__.cache_clear()


def test_a_training_step_on_a_fake_accelerator_never_touches_the_cpu(fresh_masks):
    """One step of train.py's work (the loss at every block size, backward, AdamW, the EMA update) with the model
    and batch on a fake accelerator: a tensor made on the CPU inside the step (a missing device=) fails here."""
    import copy
    mode, to = fake_accelerator()
    model = DiD(DiDConfig(seq_len=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16))
    model._apply(to)
    ema = copy.deepcopy(model).requires_grad_(False)
    x0 = torch.randint(0, 39, (2, 16))
    noise = {bs: add_noise(x0, bs, 39, 0.5, 1.0, resample=True, keep_first=True) for bs in (4, 16)}  # on the CPU, as train.py
    with mode:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        for bs in (4, 16, 0):
            x_t, t = noise.get(bs, noise[4])
            loss = model(to(x0), to(x_t), to(t), bs) if bs else model(to(x0))
            assert loss.device == model.lm_head.weight.device
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 0.01)
        with pytest.raises(Exception, match='device'):  # the check is real: a CPU tensor in the step fails
            model(to(x0), to(x_t), t, 4)


def test_the_sampler_pieces_on_a_fake_accelerator_never_touch_the_cpu(fresh_masks):
    """Every piece of the samplers without data-dependent control flow, on a fake accelerator: the draft's forward
    and KV cache, the global forward (exact, and the stale keys/values of refresh), both reveal rules (the threshold
    one must not mix in a CPU tensor), the token draw, the remask scores. The loop that drives them (fill, generate)
    reads values only where it must: the masked count per block, and with a threshold the count each forward
    revealed (.cpu()); the data-dependent shapes of h[reveal] and of the nucleus fallback; once per stage the free
    count (lowest) and, with refresh, whether the rows agree (GlobalForward)."""
    from functools import partial
    from did import ActiveKV, BlockForward, GlobalForward, StaleKV, lowest, reveal_confident, reveal_random, sample_tokens
    mode, to = fake_accelerator()
    model = tiny_model().float()
    model._apply(to)
    x = torch.randint(0, 39, (3, 32))
    x[:, 10:] = 39
    x = to(x)
    draw = partial(sample_tokens, top_p=1.0)  # the nucleus path has a data-dependent fallback
    u = to(torch.rand(3, 2, 32))
    with mode:
        blocks = BlockForward(model, x, 4, use_cache=True)
        h, n = blocks(8)  # the block [8, 12) against the cache
        blocks.block_done(8, {k: torch.zeros(3, dtype=torch.long) for k in ('cache_passes', 'token_forwards')})
        still, k = x[:, 8:12] == 39, to(torch.tensor([1, 2, 0]))
        for reveal in (reveal_random(model, h, still, k, u[:, :, :4], draw), reveal_confident(model, h, still, k, u[:, :, :4], draw),
                       reveal_confident(model, h, still, k, u[:, :, :4], draw, threshold=0.5)):
            assert all(r.device == x.device for r in reveal)
        uncached = BlockForward(model, x, 4, use_cache=False)
        assert uncached(8)[0].shape == h.shape
        h, n = GlobalForward(model, x, 1, use_cache=True)(0)
        reveal_confident(model, h, x == 39, to(torch.tensor([1, 1, 1])), u, draw, threshold=0.9)
        stale, active = StaleKV(model.config.n_layer), to(torch.arange(10, 32).repeat(3, 1))
        model.hidden(x, to(torch.arange(32)), cache=stale)
        assert model.hidden(x.gather(1, active), active, cache=ActiveKV(stale, active)).device == x.device
        conf, fixed = to(torch.rand(3, 32)), to(torch.zeros(3, 32, dtype=torch.bool))
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        for remask in ('snapshot', 'posthoc', 'random'):
            assert lowest(model, x, conf, gens, 5, fixed, remask).device == x.device
        with pytest.raises(Exception, match='device'):  # what that would do: a CPU count in a device where()
            torch.where(k > 0, (still.sum(1).clamp(min=1)).cpu(), 0)


def test_the_static_steps_on_a_fake_accelerator_never_touch_the_cpu(fresh_masks):
    """fast.py's static-shape pieces (what CUDA graphs replay) on a fake accelerator: the static KV cache's block
    forwards and clean pass, the fixed-shape reveal and a whole block's draft in both orders, and the global trunk. A CUDA graph may hold no
    CPU tensor and no sync: here a CPU tensor fails (FakeTensorDeviceMismatchError), and so does reading a value."""
    from fast import compiled_steps, reveal_one
    mode, to = fake_accelerator()
    model = tiny_model().float()
    model._apply(to)
    x = torch.randint(0, 39, (3, 32))
    x[:, 10:] = 39
    x, u = to(x), to(torch.rand(3, 2, 4))
    steps = compiled_steps(model, compile=False)
    with mode:
        blocks = steps['blocks'](model, x, 4)
        assert blocks.k[0].device == x.device and blocks.k[0].shape == (3, 2, 32, 8)
        h, n = blocks(8)
        blocks.block_done(8, {k: torch.zeros(3, dtype=torch.long) for k in ('cache_passes', 'token_forwards')})
        for confidence in (False, True):
            out = reveal_one(model, h, x[:, 8:12] == 39, to(torch.tensor([1, 1, 0])), u, PAPER, confidence)
            assert all(t.device == x.device for t in out) and out[1].shape == (3, 4)
            out = steps['draft'](model, x[:, 12:16], to(torch.ones(3, 4)), blocks.pos[3], blocks.k, blocks.v,
                                 to(torch.rand(3, 4, 2, 4)), PAPER, confidence)
            assert all(t.device == x.device for t in out) and out[2].shape == (3, 4)
        assert steps['hidden'](x, to(torch.arange(32))).device == x.device


def test_bf16_autocast_training_and_sampling_agree_with_fp32():
    """The GPU's default dtype, run on the CPU: the loss and its gradients under bf16 autocast are within bf16's
    precision of fp32 (2e-2 relative), and so are the draft's probabilities for the same tokens."""
    model = tiny_model(L=32).float()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 39, (4, 32), generator=g)
    x_t, t = add_noise(x0, 4, 39, generator=g)
    out = []
    for ctx in (contextlib.nullcontext(), torch.autocast('cpu', dtype=torch.bfloat16)):
        model.zero_grad()
        with ctx:
            loss = model(x0, x_t, t, 4)
        loss.backward()
        out.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert abs(out[0][0] - out[1][0]) / out[0][0] < 2e-2
    assert (out[0][1] - out[1][1]).norm() / out[0][1].norm() < 5e-2
    with torch.no_grad():
        h32 = model.logits(model.hidden(x0, torch.arange(32))).softmax(-1)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            h16 = model.logits(model.hidden(x0, torch.arange(32))).softmax(-1)
    assert h16.dtype == torch.float32 and (h16 - h32).abs().max() < 2e-2  # the head's logits are promoted to fp32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        res = generate(model, [5], [0, 1], sampler(Stage(4), Stage(32, 0.25)))
    assert not (res['tokens'] == 39).any() and res['conf'].dtype == torch.float32


@pytest.mark.slow
def test_flex_attention_matches_dense_mask():
    """FlexAttention is the CUDA fast path; wherever it runs, it must equal SDPA with the dense 2L mask: on
    random q, k, v (where a wrong mask shows at once) and through the model's loss."""
    from did import compiled_flex_attention, flex_block_mask
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model = tiny_model(L=256).float().to(device)  # flex tiles are 128 wide: L=256 gives partial and empty tiles
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randint(0, 39, (2, 256), device=device, generator=g)
    x_t, t = add_noise(x0, 4, 39, generator=g)
    with torch.no_grad():  # forward only: FlexAttention has no backward on the CPU
        try:
            flex_block_mask(256, 4, device)
            model.flex = True
            fast = diffusion_loss(model, x0, x_t, t, 4)
        except Exception as e:  # flex needs a compiler backend for this device
            pytest.skip(f"FlexAttention cannot run on {device} here: {type(e).__name__}: {str(e)[:200]}")
        model.flex = False
        assert torch.allclose(fast, diffusion_loss(model, x0, x_t, t, 4), rtol=1e-4, atol=1e-5)
        for B in (4, 128):  # blocks inside one tile, blocks of one tile; q, k, v shaped as the model's (compiled once)
            q, k, v = torch.randn(3, 2, 2, 512, 8, device=device, generator=g)
            flex = compiled_flex_attention()(q, k, v, block_mask=flex_block_mask(256, B, device))
            dense = F.scaled_dot_product_attention(q, k, v, attn_mask=block_diff_mask(256, B, device))
            assert torch.allclose(flex, dense, atol=1e-5), (B, (flex - dense).abs().max())


@pytest.mark.slow
def test_compiled_loss_matches_eager():
    """train.py's --compile=True path: the torch.compiled model gives the eager loss and gradients at block
    size 4 (the mask stays outside the graph: traced in, inductor's CPU code for it fails).
    Cold, this compiles for ~30 s on a 2-core CPU, so one block size only (B = L is the plain transformer)."""
    model = tiny_model(L=16, n_layer=1).float()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 39, (2, 16), generator=g)
    x_t, t = add_noise(x0, 4, 39, generator=g)
    losses, grads = [], []
    for m in (model, torch.compile(model)):
        model.zero_grad()
        loss = m(x0, x_t, t, 4)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(losses[0], losses[1], rtol=1e-5), losses
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6), (grads[0] - grads[1]).abs().max()


def test_flops_count_the_flex_tiles_that_run():
    """FlexAttention computes only the tiles of the 2L mask that are not fully masked: counted from the dense
    mask by hand, tile by tile, and carried into the FLOP estimate."""
    from did import flex_block_mask
    for L, B in ((256, 4), (256, 128), (512, 16)):
        dense = block_diff_mask(L, B)  # (2L, 2L)
        tiles = dense.view(2 * L // 128, 128, 2 * L // 128, 128).any(3).any(1)  # a tile runs if any score is live
        frac = live_fraction(flex_block_mask(L, B, 'cpu'))
        assert frac == tiles.float().mean().item() < 1
    assert abs(live_fraction(flex_block_mask(1024, 4, 'cpu')) - 0.3125) < 1e-9  # about 31% at the paper's shape
    model = tiny_model(L=32)
    model.flex = True
    attn = 12 * 2 * 16 * 64 * 64 * 3
    assert estimate_flops(model, 3, 4, 10) - estimate_flops(model, 3, 4, 10, attn_frac=0.25) == 0.75 * attn
    assert attention_fraction(model, 4) == live_fraction(flex_block_mask(32, 4, 'cpu')) and attention_fraction(model, 32) == 1


def test_estimate_flops_counts_the_2l_input():
    """6 x parameters x tokens + attention, counted layer by layer as the dense path runs it: every layer takes the
    2L input [x_t ; x_0], except that the last needs only the clean half's keys and values (n_out = L)."""
    model = tiny_model(L=32)  # 2 layers x 16 wide
    n_head = model.lm_head.weight.numel()
    layer = sum(p.numel() for p in model.h[0].parameters())
    qkv = model.h[0].attn.c_attn.weight.numel()
    attn = lambda tq, tk: 12 * 16 * tq * tk  # noqa: E731  QK^T and AV, forward and backward, one sequence
    first = 6 * layer * 64 + attn(64, 64)
    last = 6 * qkv * 64 + 6 * (layer - qkv) * 32 + attn(32, 64)
    assert estimate_flops(model, 3, 4, 10) == pytest.approx(3 * (first + last) + 6 * n_head * 10, rel=1e-12)
    model.flex = True  # FlexAttention runs the last layer on all 2L queries
    assert estimate_flops(model, 3, 4, 10) == pytest.approx(3 * 2 * first + 6 * n_head * 10, rel=1e-12)
    model.flex = False
    one = 6 * layer * 32 + attn(32, 32)  # B = L and causal: L tokens, no clean copy
    assert estimate_flops(model, 3, 32, 10) == estimate_flops(model, 3, 0, 10) == pytest.approx(3 * 2 * one + 6 * n_head * 10, rel=1e-12)


# -----------------------------------------------------------------------------
# BD3-LM checkpoints

def bd3lm_state_dict(V=50, C=128, n_layer=2, cond=16, freq=32, seed=0):
    """A random state dict in BD3-LM's exact key layout (models/hf/modeling_bd3lm.py, 'backbone.' prefix)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    sd = {'backbone.vocab_embed.embedding': r(V, C), 'backbone.sigma_map.mlp.0.weight': r(cond, freq),
          'backbone.sigma_map.mlp.0.bias': r(cond), 'backbone.sigma_map.mlp.2.weight': r(cond, cond),
          'backbone.sigma_map.mlp.2.bias': r(cond), 'backbone.output_layer.norm_final.weight': 1 + r(C),
          'backbone.output_layer.linear.weight': r(V, C), 'backbone.output_layer.linear.bias': r(V),
          'backbone.output_layer.adaLN_modulation.weight': r(2 * C, cond),
          'backbone.output_layer.adaLN_modulation.bias': r(2 * C),
          'backbone.sampling_eps_min': torch.tensor(0.5), 'backbone.sampling_eps_max': torch.tensor(1.0)}
    for i in range(n_layer):
        p = f'backbone.blocks.{i}.'
        sd.update({p + 'norm1.weight': 1 + r(C), p + 'attn_qkv.weight': r(3 * C, C), p + 'attn_out.weight': r(C, C),
                   p + 'norm2.weight': 1 + r(C), p + 'mlp.0.weight': r(4 * C, C), p + 'mlp.0.bias': r(4 * C),
                   p + 'mlp.2.weight': r(C, 4 * C), p + 'mlp.2.bias': r(C),
                   p + 'adaLN_modulation.weight': r(6 * C, cond), p + 'adaLN_modulation.bias': r(6 * C)})
    return sd


def bd3lm_reference_logits(sd, idx, attn_mask=None, pos=None, n_head=2):
    """BD3-LM's DiT forward, written out: adaLN fed sigma = 0, weight-only LayerNorms, rotary on q and k."""
    sd = {k.removeprefix('backbone.'): v.double() for k, v in sd.items()}
    B, T = idx.shape
    x = sd['vocab_embed.embedding'][idx]
    half = sd['sigma_map.mlp.0.weight'].shape[1] // 2
    args = torch.zeros(1, 1, dtype=torch.float64) * torch.exp(-math.log(10000) * torch.arange(half) / half)
    t_emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # timestep embedding of sigma = 0
    c = F.silu(F.linear(F.silu(F.linear(t_emb, sd['sigma_map.mlp.0.weight'], sd['sigma_map.mlp.0.bias'])),
                        sd['sigma_map.mlp.2.weight'], sd['sigma_map.mlp.2.bias']))  # (1, cond)
    ln = lambda x, w: F.layer_norm(x, x.shape[-1:]) * w  # noqa: E731
    C = x.shape[-1]
    hs = C // n_head
    inv = 1.0 / (10000 ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
    fr = torch.outer((torch.arange(T) if pos is None else pos).double(), inv)  # both halves of [x_t ; x_0]: 0..L-1
    cos, sin = torch.cat([fr, fr], -1).cos(), torch.cat([fr, fr], -1).sin()
    rot = lambda q: q * cos + torch.cat([-q[..., hs // 2:], q[..., :hs // 2]], -1) * sin  # noqa: E731
    for i in range(1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))):
        p = f'blocks.{i}.'
        m = F.linear(c, sd[p + 'adaLN_modulation.weight'], sd[p + 'adaLN_modulation.bias'])[:, None]  # (1, 1, 6C)
        shift1, scale1, gate1, shift2, scale2, gate2 = m.chunk(6, dim=2)
        h = ln(x, sd[p + 'norm1.weight']) * (1 + scale1) + shift1
        qkv = F.linear(h, sd[p + 'attn_qkv.weight']).view(B, T, 3, n_head, hs)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (B, nh, T, hs)
        att = (rot(q) @ rot(k).transpose(-1, -2)) / math.sqrt(hs)
        if attn_mask is not None:
            att = att.masked_fill(~attn_mask, float('-inf'))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + gate1 * F.linear(y, sd[p + 'attn_out.weight'])
        h = ln(x, sd[p + 'norm2.weight']) * (1 + scale2) + shift2
        x = x + gate2 * F.linear(F.gelu(F.linear(h, sd[p + 'mlp.0.weight'], sd[p + 'mlp.0.bias']), approximate='tanh'),
                                 sd[p + 'mlp.2.weight'], sd[p + 'mlp.2.bias'])
    shift, scale = F.linear(c, sd['output_layer.adaLN_modulation.weight'], sd['output_layer.adaLN_modulation.bias'])[:, None].chunk(2, dim=2)
    x = ln(x, sd['output_layer.norm_final.weight']) * (1 + scale) + shift
    return F.linear(x, sd['output_layer.linear.weight'], sd['output_layer.linear.bias'])


def test_bd3lm_checkpoint_converts_to_the_same_logits():
    from load import from_bd3lm
    sd = bd3lm_state_dict()
    model, eps = from_bd3lm(sd, seq_len=16)
    model = model.double().eval()
    assert eps == (0.5, 1.0) and model.config.vocab_size == 50 and model.config.n_head == 2
    idx = torch.randint(0, 50, (2, 16))
    ours = model.lm_head(model.hidden(idx, torch.arange(16)))[..., :50]  # raw logits (no SUBS masking)
    assert torch.allclose(ours, bd3lm_reference_logits(sd, idx), rtol=1e-5, atol=1e-5)  # fp32 weights
    # and through the 2L block-diffusion mask, the noisy half
    x_t = idx.clone()
    x_t[:, ::3] = 49
    inp, pos, mask = torch.cat([x_t, idx], 1), torch.cat([torch.arange(16)] * 2), block_diff_mask(16, 4)
    ours = model.lm_head(model.hidden(inp, pos, attn_mask=mask))[..., :50]
    assert torch.allclose(ours, bd3lm_reference_logits(sd, inp, mask, pos=pos), rtol=1e-5, atol=1e-5)


def test_bd3lm_head_count_comes_from_its_config(tmp_path):
    """BD3-LM's tiny model is 256 wide with 8 heads (head dim 32): the head count is read, not assumed 64 wide."""
    from load import load_bd3lm
    sd = bd3lm_state_dict(C=128)
    torch.save(sd, tmp_path / 'pytorch_model.bin')
    (tmp_path / 'config.json').write_text(json.dumps({'n_heads': 8, 'block_size': 4, 'mask_index': 49}))
    model, found = load_bd3lm(str(tmp_path), seq_len=16)
    model = model.double().eval()
    assert model.config.n_head == 8 and found == {4: (0.5, 1.0)}
    idx = torch.randint(0, 50, (2, 16))
    ours = model.lm_head(model.hidden(idx, torch.arange(16)))[..., :50]
    assert torch.allclose(ours, bd3lm_reference_logits(sd, idx, n_head=8), rtol=1e-5, atol=1e-5)


# -----------------------------------------------------------------------------
# running the scripts: in this process, as `python script.py args` would run them (torch is imported once, so a
# run that stops at a bad input takes milliseconds), or in a fresh Python where that is what a test is about
# (Ctrl-C, torchrun, a clean environment, the quick start word for word)

def run_here(cmd, cwd=None, env=None, check=False):
    """[sys.executable, script.py, args...] run in this process in cwd, with env's variables added to ours: its exit
    code, stdout and stderr, as subprocess.run(capture_output=True) gives them, on one thread. Exit handlers it
    registers run at its end; its signal handlers, cwd, argv, environment and modules from env's PYTHONPATH are undone."""
    assert cmd[0] == sys.executable and cmd[1].endswith('.py'), cmd
    out, err, exits, code = io.StringIO(), io.StringIO(), [], 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    before = (os.getcwd(), sys.argv, dict(os.environ), list(sys.path), set(sys.modules))
    extra = [p for p in (env or {}).get('PYTHONPATH', '').split(os.pathsep) if p]
    register, atexit.register = atexit.register, lambda f, *a, **k: exits.append((f, a, k)) or f
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_real's fresh Pythons run (OMP_NUM_THREADS=1): a run resumed in one is exact in the other
    try:
        os.chdir(cwd or os.getcwd())
        sys.argv, sys.path[:0] = cmd[1:], extra
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(cmd[1], run_name='__main__')
            except SystemExit as e:  # what the interpreter does with it
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else (print(e.code, file=sys.stderr), 1)[1]
            except BaseException:
                traceback.print_exc()
                code = 1
            for f, a, k in reversed(exits):  # as the interpreter runs them: an error is printed, the rest still run
                try:
                    f(*a, **k)
                except Exception:
                    traceback.print_exc()
    finally:
        atexit.register = register
        torch.set_num_threads(threads)
        os.chdir(before[0])
        sys.argv, sys.path[:] = before[1], before[3]
        os.environ.clear()
        os.environ.update(before[2])
        for s, h in handlers.items():
            signal.signal(s, h)
        for name in set(sys.modules) - before[4]:  # a stand-in module from env's PYTHONPATH must not outlive the run
            if any(str(getattr(sys.modules[name], '__file__', '') or '').startswith(p) for p in extra):
                del sys.modules[name]
    p = subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())
    assert not check or code == 0, p.stdout + p.stderr
    return p


def run_real(cmd, cwd=None, env=None, check=False):
    """The same command in a fresh Python, one thread, env's variables added to ours."""
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})))
    assert not check or p.returncode == 0, p.stdout + p.stderr
    return p


def log(folder):
    """train.py's log.jsonl in folder: its training lines {iter: loss} and its evaluations (what programs read)."""
    lines = [json.loads(line) for line in open(os.path.join(folder, 'log.jsonl'))]
    return {e['iter']: e['loss'] for e in lines if 'loss' in e}, [e for e in lines if any(k.startswith('val/') for k in e)]


# -----------------------------------------------------------------------------
# prepare_owt.py

def gpt2_encoding():
    """tiktoken's GPT-2 encoding, or skip the test: no tiktoken, or no network and no ../shared BPE files."""
    tiktoken = pytest.importorskip('tiktoken')
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        pytest.skip(f'GPT-2 BPE files unavailable offline: {e}')


@pytest.mark.slow
def test_prepare_roundtrips_gpt2_with_eot_between_documents(tmp_path):
    enc = gpt2_encoding()
    docs = ["Hello world, this is the first document.\nIt has two lines.", "Second: émigré naïve 🚀 text.",
            "Third one, from jsonl."]
    (tmp_path / 'a.txt').write_text(docs[0], encoding='utf-8')
    (tmp_path / 'b.jsonl').write_text('\n'.join(json.dumps({'text': d}) for d in docs[1:]) + '\n', encoding='utf-8')
    run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input', 'a.txt', 'b.jsonl',
                '--out_dir=out', '--val_frac=0.2'], cwd=tmp_path, check=True)
    train_ids = np.fromfile(tmp_path / 'out' / 'train.bin', dtype=np.uint16)
    val_ids = np.fromfile(tmp_path / 'out' / 'val.bin', dtype=np.uint16)
    assert len(val_ids) > 0
    ids = np.concatenate([train_ids, val_ids]).tolist()
    expected = sum(([50256] + enc.encode_ordinary(d) for d in docs), [])
    assert ids == expected
    assert enc.decode(ids) == ''.join('<|endoftext|>' + d for d in docs)
    assert json.load(open(tmp_path / 'out' / 'meta.json'))['vocab_size'] == 50257


@pytest.mark.slow
def test_prepare_tinystories_layout_and_the_compact_vocabulary_round_trip(tmp_path):
    """A file in TinyStories' layout (stories separated by <|endoftext|> lines) becomes one document per story, each
    preceded by EOS; --compact keeps the ids the text uses, and decoding through the map is GPT-2's decode."""
    enc = gpt2_encoding()
    from load import Tokenizer
    stories = ['Once upon a time, there was a cat named Tom.\nTom liked milk.', 'Lily saw a big "red" ball. She was happy!',
               'The end.', 'Ben and Sue went to the park. They played all day, and then they went home.']
    (tmp_path / 'ts.txt').write_text(''.join(s + '\n<|endoftext|>\n' for s in stories), encoding='utf-8')
    run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input=ts.txt', '--compact', '--out_dir=out',
                '--val_frac=0.2'], cwd=tmp_path, check=True)
    meta = json.load(open(tmp_path / 'out' / 'meta.json'))
    ids = np.concatenate([np.fromfile(tmp_path / 'out' / f, dtype=np.uint16) for f in ('train.bin', 'val.bin')]).tolist()
    gpt2 = sum(([50256] + enc.encode_ordinary(s) for s in stories), [])
    assert meta['ids'] == sorted(set(gpt2)) and meta['vocab_size'] == len(meta['ids']) and meta['ids'][meta['eot']] == 50256
    assert [meta['ids'][i] for i in ids] == gpt2  # every story a document preceded by EOS, nothing else
    tok = Tokenizer(meta)
    assert tok.decode(ids) == enc.decode(gpt2) == ''.join('<|endoftext|>' + s for s in stories)
    text = 'Tom saw a big "red" ball.<|endoftext|>Lily was happy!'
    assert tok.decode(tok.encode(text)) == text and tok.encode(text) == [meta['ids'].index(g) for g in
                                                                         enc.encode(text, allowed_special='all')]
    with pytest.raises(ValueError, match=r"the word ' zo' \(GPT-2 token 40565\) is not in this model's vocabulary"):
        tok.encode('Tom liked zoology')  # not a word of the four stories: named in one line
    assert tok.decode(tok.encode('Tom liked zoology', strict=False)).startswith('Tom liked')  # the judge's: bytes, or left out
    assert tok.unknown('Tom liked zoology<|endoftext|>Tom') == 2 and tok.unknown(text) == 0  # ' zo', 'ology': what sample.py counts
    ds = run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input=ts.txt', '--dataset=tinystories',
                     '--out_dir=o2'], cwd=tmp_path)
    assert ds.returncode == 1 and 'give one' in ds.stderr and not (tmp_path / 'o2').exists()


def test_prepare_owt_validation_has_no_eot_between_documents_as_bd3lm(tmp_path):
    # a stand-in for the datasets package: OpenWebText streamed as ten tiny documents
    docs = [f"document {i}: some words." for i in range(10)]
    (tmp_path / 'datasets.py').write_text(f"def load_dataset(*a, streaming=False, **k):\n"
                                          f"    return iter([{{'text': d}} for d in {docs!r}])\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--num_docs=10', '--tokenizer=char',
                '--val_frac=0.3', '--out_dir=out'], cwd=tmp_path, env=env, check=True)
    meta = json.load(open(tmp_path / 'out' / 'meta.json'))
    decode = lambda f: ''.join('|' if i == meta['eot'] else meta['chars'][i]
                               for i in np.fromfile(tmp_path / 'out' / f, dtype=np.uint16))
    assert decode('train.bin') == ''.join('|' + d for d in docs[:7])  # training: <|endoftext|> before every document
    assert decode('val.bin') == ''.join(docs[7:])  # validation: BD3-LM's insert_valid_eos=False


# -----------------------------------------------------------------------------
# train.py: learning, exact resume, fine-tunes, DDP, one run per out_dir

def synthetic_play(path, n=4000):
    """Offline stand-in for Tiny Shakespeare: speakers and lines of random words, in its character set."""
    rng = np.random.default_rng(0)
    words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'dog', 'ran', 'far', 'my', 'lord', 'thou', 'art', 'be', 'not']
    speakers = ['ROMEO', 'JULIET', 'First Citizen', 'KING HENRY VI', 'QUEEN MARGARET']
    path.write_text(''.join(f"{rng.choice(speakers)}:\n{' '.join(rng.choice(words, 9)).capitalize()}, {' '.join(rng.choice(words, 6))}"
                            f"{rng.choice(['.', '!', '?', ';'])}\n\n" for _ in range(n)))
    return path


def make_data(tmp_path):
    """Tiny Shakespeare as characters when ../shared is here; a synthetic play of the same characters otherwise."""
    src = SHAKESPEARE if os.path.exists(SHAKESPEARE) else synthetic_play(tmp_path / 'synthetic.txt')
    run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input', str(src), '--tokenizer=char',
              f'--out_dir={tmp_path}/data/tiny'], check=True)


TINY = ['--dataset=tiny', '--seq_len=64', '--n_layer=2', '--n_head=2', '--n_embd=64', '--batch_size=8',
        '--total_batch_size=512', '--block_mix={4: 0.7, 64: 0.3}', '--eval_block_sizes=[4]', '--eval_iters=2',
        '--warmup_iters=5', '--learning_rate=3e-3', '--log_interval=1', '--device=cpu', '--compile=False']


def train(tmp_path, *args, torchrun=0, base=TINY):
    """train.py with these settings in tmp_path (in this process; torchrun=N: N fresh processes): the losses this run
    logged, {iteration: loss} from its out_dir's log.jsonl, and what it printed."""
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *base, *args]
    folder = tmp_path / [a for a in cmd if a.startswith('--out_dir=')][-1][10:]
    n = len(open(folder / 'log.jsonl').readlines()) if '--init_from=resume' in args and (folder / 'log.jsonl').exists() else 0
    if torchrun:
        p = run_real([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={torchrun}', *cmd[1:]], tmp_path)
    else:
        p = run_here(cmd, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [json.loads(line) for line in open(folder / 'log.jsonl').readlines()[n:]] if (folder / 'log.jsonl').exists() else []
    return {e['iter']: e['loss'] for e in lines if 'loss' in e}, p.stdout


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """Data, and 40 iterations of train.py with a checkpoint every 20, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp('run')
    make_data(tmp_path)
    return tmp_path, *train(tmp_path, '--max_iters=40', '--eval_interval=20', '--out_dir=a')


def test_doc_start_windows_begin_at_a_story(tmp_path, monkeypatch):
    """--doc_start=True: every training and validation window's text begins at a story's first character (here 'Q',
    found nowhere else), after the <|endoftext|> at position 0 (or at position 0 with --bos=False); by default
    windows begin anywhere. A corpus with no document break leaves no story to start at: one line, before any
    training."""
    rng = np.random.default_rng(0)
    words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'dog', 'ran', 'far']
    (tmp_path / 's.txt').write_text(''.join(f"Q{' '.join(rng.choice(words, int(rng.integers(10, 40))))}.\n<|endoftext|>\n"
                                            for _ in range(200)))
    run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input', str(tmp_path / 's.txt'), '--tokenizer=char',
              f'--out_dir={tmp_path}/data/st'], check=True)
    meta = json.load(open(tmp_path / 'data' / 'st' / 'meta.json'))
    q, seen = meta['chars'].index('Q'), []
    monkeypatch.setattr('did.add_noise', lambda x0, *a, **k: seen.append(x0.clone()) or add_noise(x0, *a, **k))
    for doc_start, bos in ((True, True), (True, False), (False, True)):
        seen.clear()
        train(tmp_path, '--dataset=st', '--max_iters=2', '--eval_interval=2', f'--doc_start={doc_start}', f'--bos={bos}',
              f'--out_dir=d{doc_start}{bos}')
        x0 = torch.cat([x for x in seen if x.shape[1] == 64])  # the training batches and the validation ones
        assert len(x0) > 16 and bool((x0[:, 0] == meta['eot']).all()) == bos
        first = x0[:, int(bos)]  # the text's first token
        assert (first == q).all() if doc_start else (first == q).float().mean() < 0.5
    (tmp_path / 'one.txt').write_text('Q' + ' '.join(rng.choice(words, 400)))
    run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input', str(tmp_path / 'one.txt'), '--tokenizer=char',
              f'--out_dir={tmp_path}/data/one'], check=True)
    p = run_here([sys.executable, os.path.join(ROOT, 'train.py'), *TINY, '--dataset=one', '--doc_start=True', '--out_dir=o'], tmp_path)
    assert p.returncode == 1 and "--doc_start=True but data/one/val.bin has no <|endoftext|> followed by 63 tokens" in p.stderr, p.stderr
    assert not (tmp_path / 'o').exists()


@pytest.mark.slow
def test_training_lowers_loss_and_resume_is_exact(tiny_run):
    tmp_path, full, _ = tiny_run
    val = [e['val/nelbo_B4'] for e in log(tmp_path / 'a')[1]]
    assert len(val) == 2 and val[1] < val[0] < math.log(65) and full[40] < full[1]
    # interrupted at 20, then resumed to 40: the same losses, to the last bit
    train(tmp_path, '--max_iters=20', '--eval_interval=20', '--out_dir=b')
    resumed, _ = train(tmp_path, '--max_iters=40', '--eval_interval=20', '--out_dir=b', '--init_from=resume')
    assert sorted(resumed) == list(range(21, 41))
    assert all(resumed[i] == full[i] for i in resumed), (resumed, full)
    # the checkpoint is complete and was written atomically (no temp file left behind)
    ckpt = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=False)
    assert ckpt['iter_num'] == 40 and {'model', 'ema', 'optimizer', 'model_args', 'config'} <= set(ckpt)
    assert not (tmp_path / 'b' / 'ckpt.pt.tmp').exists()
    # --eval_only reports the validation NELBO of the checkpoint at any block size, and the same number twice
    for _ in range(2):
        train(tmp_path, '--out_dir=b', '--init_from=resume', '--eval_only=True', '--eval_block_sizes=[2, 16]')
    evals = log(tmp_path / 'b')[1][-2:]
    assert evals[0] == evals[1] and evals[0]['eval_only'] and {'val/nelbo_B2', 'val/nelbo_B16'} <= set(evals[0])


@pytest.mark.slow
def test_fine_tune_from_a_run_and_the_noise_search(tiny_run):
    """--init_from=run:DIR starts from that run's weights and EMA with a fresh optimizer, iteration 0, its own
    out_dir (the source untouched), and the noise intervals of its own config, as BD3-LM resets them."""
    tmp_path = tiny_run[0]
    _, log = train(tmp_path, '--max_iters=2', '--eval_interval=2', '--out_dir=src', '--noise_search=True',
                   '--search_interval=2', '--search_seqs=16')
    assert 'note: --warmup_iters=5 is more than --max_iters=2: the learning rate stays in its warmup and ends at 1.00e-03' in log
    src = torch.load(tmp_path / 'src' / 'ckpt.pt', weights_only=False)
    assert set(src['intervals']) == {4} and 'noise search B=4 on 16 sequences: interval' in log  # the global block stays unclipped
    assert all(iv in __import__('did').search_intervals() for iv in src['intervals'].values())
    before = (tmp_path / 'src' / 'ckpt.pt').read_bytes()
    _, log = train(tmp_path, '--max_iters=1', '--eval_interval=1', '--out_dir=ft_run', '--init_from=run:src',
                   '--learning_rate=1e-30', '--block_mix={4: 1.0}', '--noise_clip={4: (0.25, 1.0)}')
    ft = torch.load(tmp_path / 'ft_run' / 'ckpt.pt', weights_only=False)
    assert 'fine-tuning src/ckpt.pt (iteration 2)' in log and ft['iter_num'] == 1
    assert all(torch.allclose(ft['model'][k], v, rtol=0, atol=1e-20) for k, v in src['model'].items())  # lr 1e-30
    assert all(s['step'] == 1 for s in ft['optimizer']['state'].values())  # a fresh optimizer
    assert ft['intervals'] == {4: (0.25, 1.0)}  # this run's noise_clip, not the source's search
    assert (tmp_path / 'src' / 'ckpt.pt').read_bytes() == before
    # the EMA weights are the source's: evaluating the fine-tune's starting point gives the source's numbers
    ev = [train(tmp_path, f'--out_dir={d}', f'--init_from={i}', '--eval_only=True')[1]  # the printed report
          for d, i in (('src', 'resume'), ('unused', 'run:src'))]
    assert ev[0].splitlines()[-2:] == ev[1].splitlines()[-2:] and 'val/nelbo_B4: ' in ev[0]


@pytest.mark.slow
def test_divergence_at_an_evaluation_keeps_the_last_good_checkpoint(tiny_run):
    """The weights explode (lr 1e30) right before an evaluation: nothing non-finite is saved, the message says
    which iteration the untouched checkpoint holds, and the exit code is not 0."""
    tmp_path = tiny_run[0]
    train(tmp_path, '--max_iters=2', '--eval_interval=2', '--out_dir=nan')
    before = (tmp_path / 'nan' / 'ckpt.pt').read_bytes()
    out = run_here([sys.executable, os.path.join(ROOT, 'train.py'), '--out_dir=nan', '--init_from=resume',
                      '--max_iters=4', '--eval_interval=1', '--learning_rate=1e30'], cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and 'diverged by iteration 3' in lines[0], out.stdout + out.stderr
    assert 'nan/ckpt.pt holds iteration 2' in lines[0]
    assert (tmp_path / 'nan' / 'ckpt.pt').read_bytes() == before


@pytest.mark.slow
def test_ctrl_c_saves_the_last_iteration_and_resumes_exactly(tiny_run):
    """SIGINT mid-run: one line, the last finished iteration saved (atomically), and a resume that continues with
    exactly the losses of an uninterrupted run; resuming needs nothing but --out_dir and --init_from."""
    tmp_path = tiny_run[0]
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *TINY, '--max_iters=1000', '--eval_interval=1000',
           '--out_dir=int']
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    for line in p.stdout:
        if line.startswith('iter 5:'):
            break
    p.send_signal(signal.SIGINT)
    rc, err = p.wait(timeout=60), p.stderr.read()
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith('error: interrupted: int/ckpt.pt holds iteration'), err
    n = torch.load(tmp_path / 'int' / 'ckpt.pt', weights_only=False)['iter_num']
    assert n >= 5 and f'holds iteration {n};' in lines[0] and not (tmp_path / 'int' / 'ckpt.pt.tmp').exists()
    resumed, log = train(tmp_path, '--out_dir=int', '--init_from=resume', f'--max_iters={n + 3}')  # TINY is just repeated
    out = run_here([sys.executable, os.path.join(ROOT, 'train.py'), '--out_dir=int', '--init_from=resume',
                      f'--max_iters={n + 5}'], cwd=tmp_path)  # the saved config alone
    assert out.returncode == 0 and f'resuming from iteration {n + 3}' in out.stdout, out.stderr
    full, _ = train(tmp_path, '--max_iters=' + str(n + 3), '--eval_interval=1000', '--out_dir=int_full')
    assert f'resuming from iteration {n}' in log and sorted(resumed) == list(range(n + 1, n + 4))
    assert all(resumed[i] == full[i] for i in resumed), (resumed, full)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_noise_search(tiny_run):
    """The same losses with 2 gloo processes as with 1, through noise searches: every rank scores its share of the
    same search batches and all-gathers the losses, so every rank picks the 1-process run's interval (a rank that
    kept its own interval would train on other noise). And MFU is per device: MFU / (tokens/s) is the FLOPs one
    process spends per token over its peak, so with 2 processes it must be half the 1-process value (each does half
    of the same micro-batches); FLOPs summed over processes would make it equal."""
    tmp_path = tiny_run[0]
    args = ['--max_iters=6', '--eval_interval=2', '--batch_size=4', '--log_interval=1', '--block_mix={4: 1.0}',
            '--noise_search=True', '--search_interval=2', '--search_seqs=24', '--peak_flops=1e9']
    one, log1 = train(tmp_path, *args, '--out_dir=s1')
    two, log2 = train(tmp_path, *args, '--out_dir=s2', torchrun=2)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
    assert all(abs(one[i] - two[i]) < 1e-5 for i in one), (one, two)
    runs = [[json.loads(line) for line in open(tmp_path / d / 'log.jsonl')] for d in ('s1', 's2')]
    found = [[e['intervals'] for e in r if 'intervals' in e] for r in runs]
    assert len(found[0]) == 3 and found[0] == found[1] and 'noise search B=4 on 24 sequences: interval' in log1
    ck = [torch.load(tmp_path / d / 'ckpt.pt', weights_only=False)['intervals'] for d in ('s1', 's2')]
    assert ck[0] == ck[1] != {4: (0.5, 1.0)}
    q1, q2 = (e['mfu'] / e['tok_per_s'] for r in runs for e in r if e.get('iter') == 6 and 'loss' in e)
    assert 0.45 < q2 / q1 < 0.55, (log1, log2)


@pytest.mark.slow
def test_resume_at_an_evaluation_iteration_is_exact(tiny_run):
    """Ctrl-C with an evaluation (and noise search) due at the iteration it stops on: that evaluation runs before the
    save, so the resumed run continues digit for digit as the uninterrupted one (losses, intervals, weights)."""
    tmp_path = tiny_run[0]
    args = [*TINY, '--eval_interval=1', '--noise_search=True', '--search_interval=1', '--search_seqs=8', '--eval_iters=1']
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *args, '--max_iters=1000', '--out_dir=ev'],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    for line in p.stdout:
        if line.startswith('iter 3:'):
            break
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) != 0 and 'interrupted' in p.stderr.read()
    n = torch.load(tmp_path / 'ev' / 'ckpt.pt', weights_only=False)['iter_num']
    resumed, _ = train(tmp_path, '--out_dir=ev', '--init_from=resume', f'--max_iters={n + 3}')
    full, _ = train(tmp_path, *args[len(TINY):], f'--max_iters={n + 3}', '--out_dir=ev_full')
    assert sorted(resumed) == list(range(n + 1, n + 4)) and all(resumed[i] == full[i] for i in resumed), (resumed, full)
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=False) for d in ('ev', 'ev_full'))
    assert a['intervals'] == b['intervals'] and all(torch.equal(a['model'][k], v) for k, v in b['model'].items())


@pytest.mark.slow
def test_resume_takes_a_new_noise_clip_and_a_fine_tune_keeps_its_shape(tiny_run):
    """A --noise_clip given at resume is the one used (and saved); a fine-tune whose config shape differs from its
    source's (it keeps the source's) resumes with no override, refuses a conflicting one, and may change seq_len."""
    tmp_path = tiny_run[0]
    train(tmp_path, '--max_iters=2', '--eval_interval=2', '--out_dir=nc')
    _, log = train(tmp_path, '--out_dir=nc', '--init_from=resume', '--max_iters=4', '--noise_clip={4: (0.25, 1.0)}')
    assert torch.load(tmp_path / 'nc' / 'ckpt.pt', weights_only=False)['intervals'] == {4: (0.25, 1.0)}
    assert 'noise_clip for B=4: (0.25, 1.0) (the checkpoint had (0.5, 1.0))' in log
    small = [a for a in TINY if not a.startswith(('--n_layer', '--n_head', '--n_embd'))]  # the defaults: 12 x 768
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *small, '--init_from=run:nc', '--out_dir=ftshape', '--max_iters=2',
           '--eval_interval=1']
    assert run_here(cmd, cwd=tmp_path).returncode == 0
    out = run_here([sys.executable, os.path.join(ROOT, 'train.py'), '--out_dir=ftshape', '--init_from=resume',
                      '--max_iters=3'], cwd=tmp_path)
    assert out.returncode == 0 and 'resuming from iteration 2' in out.stdout, out.stderr
    out = run_here([sys.executable, os.path.join(ROOT, 'train.py'), '--out_dir=ftshape', '--init_from=resume',
                      '--max_iters=4', '--n_layer=3'], cwd=tmp_path)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and 'drop --n_layer' in out.stderr, out.stderr
    # a fine-tune at another length (the source trained at 64): its rotary positions are not weights
    _, log = train(tmp_path, '--init_from=run:nc', '--out_dir=ftlen', '--max_iters=2', '--eval_interval=2', '--seq_len=32',
                   '--block_mix={4: 1.0}', '--eval_block_sizes=[4, 32]')
    assert torch.load(tmp_path / 'ftlen' / 'ckpt.pt', weights_only=False)['model_args']['seq_len'] == 32


@pytest.mark.slow
def test_two_runs_into_one_out_dir_the_second_refuses(tiny_run):
    """While one train.py writes to an out_dir, a second one there (a resume or a new run) refuses at once and the
    first goes on, its checkpoint its own; a lock left by a killed run is recognised and taken over."""
    tmp_path = tiny_run[0]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *TINY, '--max_iters=100000', '--eval_interval=30',
                              '--out_dir=busy'], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in first.stdout:
        if line.startswith('saved checkpoint'):  # the first evaluation's checkpoint exists: a resume would find it
            break
    second = [run_here([sys.executable, os.path.join(ROOT, 'train.py'), *TINY, '--out_dir=busy', *extra],
                         cwd=tmp_path, env=env)
              for extra in (['--init_from=resume', '--max_iters=100005'], ['--overwrite=True', '--max_iters=5'])]
    assert first.poll() is None  # still training
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    for s in second:
        lines = s.stderr.strip().splitlines()
        assert s.returncode != 0 and len(lines) == 1 and 'is being trained by another run' in lines[0], s.stderr
    ck = torch.load(tmp_path / 'busy' / 'ckpt.pt', weights_only=False)
    assert f"holds iteration {ck['iter_num']}" in err and ck['iter_num'] >= 30 and ck['config']['max_iters'] == 100000
    assert not (tmp_path / 'busy' / 'train.lock').exists()
    (tmp_path / 'busy' / 'train.lock').write_text(f"{os.uname().nodename} 999999999")  # a killed run's lock
    _, log = train(tmp_path, '--out_dir=busy', '--init_from=resume', f"--max_iters={ck['iter_num'] + 1}")
    assert 'taking over busy/train.lock, left by a run that is no longer running' in log


@pytest.mark.slow
def test_train_py_fine_tunes_a_local_bd3lm_checkpoint(tiny_run):
    """A BD3-LM checkpoint fine-tunes with its shape; its searched interval is read (float32's 1e-3,
    0.0010000000474974513, is the unclipped bound) but, as in BD3-LM, not carried into the fine-tune."""
    tmp_path = tiny_run[0]
    V = json.load(open(tmp_path / 'data' / 'tiny' / 'meta.json'))['vocab_size'] + 1
    for name, eps, block in (('bd3', (0.5, 1.0), 64), ('bd3u', (1e-3, 1.0), 4)):
        os.makedirs(tmp_path / name, exist_ok=True)
        sd = bd3lm_state_dict(V=V)
        sd['backbone.sampling_eps_min'], sd['backbone.sampling_eps_max'] = torch.tensor(eps, dtype=torch.float32)
        torch.save(sd, tmp_path / name / 'pytorch_model.bin')
        (tmp_path / name / 'config.json').write_text(json.dumps({'n_heads': 2, 'block_size': block, 'mask_index': V - 1}))
    shapeless = [a for a in TINY if not a.startswith(('--n_layer=', '--n_head=', '--n_embd='))]  # the checkpoint's shape
    losses, log = train(tmp_path, '--max_iters=2', '--eval_interval=2', '--out_dir=ft', '--init_from=bd3lm:bd3',
                        '--noise_clip={}', base=shapeless)
    assert 'loaded bd3lm:bd3' in log and "'n_embd': 128" in log and "searched noise interval {64: (0.5, 1.0)}" in log
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    # as BD3-LM's fine-tuning, the intervals start from the config (noise_clip), not from the checkpoint's search
    assert torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=False)['intervals'] == {}
    _, log = train(tmp_path, '--max_iters=1', '--eval_interval=1', '--out_dir=ftu', '--init_from=bd3lm:bd3u', base=shapeless)
    # a shape given on the command line that contradicts the checkpoint is refused in one line
    out = run_here([sys.executable, os.path.join(ROOT, 'train.py'), *TINY, '--out_dir=fts', '--init_from=bd3lm:bd3'],
                     cwd=tmp_path)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and 'drop --n_embd' in out.stderr, out.stderr
    assert torch.load(tmp_path / 'ftu' / 'ckpt.pt', weights_only=False)['intervals'] == {4: (0.5, 1.0)}
    assert 'searched noise interval none' in log  # float32's 1e-3 is the unclipped bound
    # a vocabulary whose MASK is not the last id (an LM1B / BERT checkpoint) is refused in one line
    (tmp_path / 'bd3' / 'config.json').write_text(json.dumps({'n_heads': 2, 'block_size': 64, 'mask_index': 3}))
    out = run_here([sys.executable, os.path.join(ROOT, 'train.py'), *shapeless, '--out_dir=ftm', '--init_from=bd3lm:bd3'],
                     cwd=tmp_path)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and 'MASK at 3' in out.stderr, out.stderr


# -----------------------------------------------------------------------------
# bad inputs to every script: one line, the fix, nothing changed on disk; --help

def snapshot(root):
    """Every file under root with its size and modification time: what "nothing changed on disk" compares."""
    return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
            for d, _, fs in os.walk(root) for f in fs} | {d: None for d, _, _ in os.walk(root)}


def changed_files(root, before):
    after = snapshot(root)
    return [k for k in set(before) | set(after) if before.get(k, '-') != after.get(k, '-')]


@pytest.fixture(scope='module')
def bad(tiny_run):
    """tiny_run's folder and the broken things the bad inputs below point at."""
    tmp_path = tiny_run[0]
    shutil.copytree(tmp_path / 'a', tmp_path / 'garbage', dirs_exist_ok=True)
    (tmp_path / 'garbage' / 'ckpt.pt').write_bytes(b'not a checkpoint')
    shutil.copytree(tmp_path / 'a', tmp_path / 'truncated', dirs_exist_ok=True)
    blob = (tmp_path / 'a' / 'ckpt.pt').read_bytes()
    (tmp_path / 'truncated' / 'ckpt.pt').write_bytes(blob[:len(blob) // 2])
    (tmp_path / 'afile').write_text('x')
    (tmp_path / 'empty.txt').write_text('')
    (tmp_path / 'binary.dat').write_bytes(bytes(range(256)) * 4)
    (tmp_path / 'exists.jsonl').write_text('{}\n')
    os.makedirs(tmp_path / 'data' / 'short', exist_ok=True)
    shutil.copy(tmp_path / 'data' / 'tiny' / 'meta.json', tmp_path / 'data' / 'short')
    for split in ('train', 'val'):
        np.zeros(50, dtype=np.uint16).tofile(tmp_path / 'data' / 'short' / f'{split}.bin')
    os.makedirs(tmp_path / 'adir', exist_ok=True)
    for name, change in (('odd', None), ('badmeta', None), ('shifted', None)):  # broken copies of the data
        shutil.copytree(tmp_path / 'data' / 'tiny', tmp_path / 'data' / name, dirs_exist_ok=True)
    with open(tmp_path / 'data' / 'odd' / 'train.bin', 'ab') as f:
        f.write(b'x')
    (tmp_path / 'data' / 'badmeta' / 'meta.json').write_text('{"tokenizer": "char", ')
    meta = json.load(open(tmp_path / 'data' / 'tiny' / 'meta.json'))
    meta['chars'] = meta['chars'][1:] + meta['chars'][:1]  # the same size, every id another character
    (tmp_path / 'data' / 'shifted' / 'meta.json').write_text(json.dumps(meta))
    ck = torch.load(tmp_path / 'a' / 'ckpt.pt', weights_only=False)
    os.makedirs(tmp_path / 'noopt', exist_ok=True)
    torch.save({k: v for k, v in ck.items() if k != 'optimizer'}, tmp_path / 'noopt' / 'ckpt.pt')
    other = dict(ck, config={**ck['config'], 'causal': True}, meta={**ck['meta'], 'chars': meta['chars']})
    os.makedirs(tmp_path / 'otherjudge', exist_ok=True)
    torch.save(other, tmp_path / 'otherjudge' / 'ckpt.pt')  # an AR judge that reads other characters
    (tmp_path / 'cfg_type.py').write_text("batch_size = 'eight'\n")
    os.makedirs(tmp_path / 'abl', exist_ok=True)
    (tmp_path / 'abl' / 'results.json').write_text('{}')  # an ablation folder without its models
    (tmp_path / 'cfg_typo.py').write_text("n_layers = 8\n")
    (tmp_path / 'num.jsonl').write_text('{"text": 42}\n')
    nometa = {k: v for k, v in ck.items() if k != 'meta'}  # a character model saved before checkpoints carried meta
    os.makedirs(tmp_path / 'nometa', exist_ok=True)
    torch.save(nometa, tmp_path / 'nometa' / 'ckpt.pt')
    return tmp_path


T = ['train.py', *TINY]


S = ['sample.py', '--out_dir=a', '--num_samples=2']


P = ['prepare_owt.py']


Bn = ['bench.py', '--shape=smoke', '--device=cpu']


A = ['ablate.py', '--text=afile', '--out_dir=newabl']


Q = ['ablation-tinystories/quickstart.py']


BAD = [  # (command, what the one line must say)
    (T + ['--dataset=odd', '--out_dir=n1'], 'odd number of bytes'),
    (T + ['--dataset=badmeta', '--out_dir=n1'], 'not valid JSON'),
    (T + ['--dataset=shifted', '--init_from=resume', '--out_dir=a'], 'other tokens'),  # resume on other tokens
    (T + ['--dataset=shifted', '--init_from=resume', '--out_dir=a', '--eval_only=True'], 'other tokens'),
    (T + ['--init_from=resume', '--out_dir=noopt'], 'no optimizer state'),
    (T + ['cfg_type.py', '--out_dir=n1'], 'should be a int'),
    (T + ['cfg_typo.py', '--out_dir=n1'], 'unknown config key n_layers in cfg_typo.py; did you mean n_layer?'),
    (T + ['--init_from=bd3lm:./missing', '--out_dir=n1'], 'not a folder here'),
    (T + ['--dtype=float16', '--out_dir=n1'], 'needs CUDA'),
    (T + ['--noise_search=True', '--search_interval=3', '--eval_interval=2', '--out_dir=n1'], 'multiple of'),
    (S + ['--out=a/ckpt.pt', '--overwrite=True'], 'would write over a checkpoint'),
    (S + ['--out=adir'], 'is a folder'),
    (S + ['--words_from=binary.dat'], 'not a readable UTF-8'),
    (S + ['--eval', '--judge=otherjudge'], 'reads other tokens'),
    (S + ['--infill=no holes here'], 'has no hole'),
    (S + ['--max_len=1'], 'leaves no room'),
    (S + ['--html=/proc/self/x.html'], 'cannot write --html'),
    (S + ['--html=adir'], 'is a folder'),
    (S + ['--html=a/ckpt.pt'], 'would write over a checkpoint'),  # the model being sampled
    (S + ['--html=exists.jsonl'], 'exists'),
    (S + ['--out=o.jsonl', '--html=o.jsonl'], 'two files'),
    (S + ['--stop_at_eos=True'], 'give --max_len'),
    (S + ['--compile=True', '--max_len=300'], 'compiles the fixed-length sampler'),
    (S + ['--min_entropy=-1'], 'min_entropy'),
    (S + ['--stages=4:1.0:threshold=0.9:steps=2'], 'no steps'),
    (S + ['--dtype=float16'], 'needs CUDA'),
    (P + ['--input', 'num.jsonl', '--tokenizer=char', '--out_dir=n2'], 'not a string'),
    (P + ['--input', 'afile', '--tokenizer=char', '--out_dir=/proc/self/n2'], 'cannot write'),
    (P + ['--input', 'afile', '--tokenizer=char', '--out_dir=n2', '--num_proc=0'], 'at least 1'),
    (P + ['--input', 'afile', '--tokenizer=char', '--compact', '--out_dir=n2'], 'drop --compact'),
    (P + ['--input', 'afile', '--dataset=tinystories', '--out_dir=n2'], 'give one'),
    (P + ['--compact', '--out_dir=n2'], 'too many for all of OpenWebText'),
    (Q + ["--models={'a': 'a'}", '--out_dir=adir'], 'adir/results.json not found'),
    (Q + ["--models={'a': 'a'}", '--out_dir=a', '--temperatures=[1.0]'], 'give two or more, ascending'),
    (Q + ["--models={'a': 'a'}", '--out_dir=a', '--temperatures=[1.2, 0.8]'], 'give two or more, ascending'),
    (Q + ['--models={}'], '--models is empty'),
    (Q + ['--order=left'], "--order='left': use random"),
    (Q + ["--remasks=['snapshot', 'lowest']"], "name some of snapshot, posthoc, random"),
    (Q + ["--remasks=[['snapshot']]"], "name some of snapshot, posthoc, random"),
    (Q + ["--models={'a': 'a'}", '--out_dir=abl'], "has no token protocol's rows"),
    (A + ['--tokenizer=bpe'], 'use char or gpt2'), (A + ["--orders=['sideways']"], 'draft orders'),
    (Bn + ['--train_iters=0'], 'train_iters=0'), (Bn + ['--warmup=-1'], 'warmup=-1'), (Bn + ['--vocab_size=1'], 'vocab_size=1'),
    (Bn + ['--sample_batch=0'], 'sample_batch=0'), (Bn + ['--head_std=-1'], 'head_std'), (Bn + ['--long_len=30'], 'long_len=30'),
    (Bn + ['--batch_size=0'], 'batch_size=0'), (Bn + ['--shape=huge'], 'unknown --shape=huge'), (Bn + ['--dtype=float16'], 'needs CUDA'),
    (Bn + ['--floor=True', "--floor_models=['gpt5']"], 'floor_models'), (Bn + ['--floor=True', '--floor_blocks=0'], 'floor_blocks=0'),
    (A + ['--budget_frac=0'], 'budget_frac=0'), (A + ['--gammas=[2]'], 'remask ratios'), (A + ['--block_mix=1.5'], 'block_mix'),
    (A + ['--num_samples=1'], 'num_samples=1'), (A + ["--temperatures={'random': [1.0]}"], 'each order'),
    (A + ['--seeds=[1, 1]'], 'distinct'), (A + ['--finetune_iters=0'], 'finetune_iters=0'), (A + ['--beta2=1.0'], 'beta2=1.0'),
    (['ablate.py', '--text=nope.txt'], 'not a text file'),
    (T + ['--block_mix={4: 1.5, 64: -0.5}', '--out_dir=n1'], 'probabilities >= 0'),
    (T + ['--block_mix={5: 1.0}', '--out_dir=n1'], 'does not divide seq_len'),
    (T + ['--block_mix={4: 0.5}', '--out_dir=n1'], 'sum to'),
    (T + ['--batch_size=True', '--out_dir=n1'], 'should be a int'),
    (T + ['--device=gpu', '--out_dir=n1'], 'use cpu, cuda'),
    (T + ['--dtype=float64', '--out_dir=n1'], 'use float32, bfloat16 or float16'),
    (T + ['--eval_interval=0', '--out_dir=n1'], 'eval_interval=0 must be a positive'),
    (T + ['--log_interval=0', '--out_dir=n1'], 'log_interval=0 must be a positive'),
    (T + ['--batch_size=0', '--out_dir=n1'], 'batch_size=0 must be a positive'),
    (T + ['config/nope.py', '--out_dir=n1'], 'config file config/nope.py not found'),
    (T + ['--dataset=nope', '--out_dir=n1'], 'prepare_owt.py'),
    (T + ['--dataset=short', '--out_dir=n1'], 'fewer than one sequence'),
    (T + ['--nonsense=1', '--out_dir=n1'], 'unknown config key'),
    (T + ['--block_size=16', '--out_dir=n1'], 'did you mean --seq_len'),
    (T + ['--tokenizer=gpt2', '--out_dir=n1'], 'holds char tokens'),
    (T + ['--noise_clip={4: (0.3, 0.4)}', '--out_dir=n1'], 'widen the noise interval'),
    (T + ['--eval_only=True', '--out_dir=a'], 'add --init_from=resume'),
    (T + ['--init_from=resume', '--out_dir=none'], 'none/ckpt.pt not found'),
    (T + ['--init_from=resume', '--out_dir=garbage'], 'not a readable checkpoint'),
    (T + ['--init_from=resume', '--out_dir=truncated'], 'not a readable checkpoint'),
    (T + ['--init_from=resume', '--out_dir=a', '--n_layer=3'], 'n_layer=2'),
    (T + ['--init_from=run:none', '--out_dir=n1'], 'none/ckpt.pt not found'),
    (T + ['--init_from=run:a', '--out_dir=a'], "this run's own out_dir"),
    (T + ['--out_dir=a'], 'already holds a trained model'),  # from scratch over a trained run
    (T + ['--out_dir=afile'], 'is a file'),
    (T + ['--out_dir=afile/sub'], 'cannot write to --out_dir'),
    (T + ['--out_dir=/proc/self'], 'cannot write to --out_dir'),
    (S + ['--num_samples=0'], 'must be positive'),
    (S + ['--batch_size=0'], 'must be positive'),
    (S + ['--stages=x:1.0'], 'bad stage'),
    (S + ['--steps=0'], 'positive integer'),
    (S + ['--stages=4:1.0:0'], 'at least one denoising step'),
    (S + ['--temperature=-1'], 'temperature=-1'),
    (S + ['--top_p=0'], 'top_p=0'),
    (S + ['--top_p=1.5'], 'top_p=1.5'),
    (S + ['--out=/proc/self/s.jsonl'], 'cannot write --out'),
    (S + ['--out=exists.jsonl'], 'exists'),
    (S + ['--eval', '--judge=missing.pt'], 'missing.pt not found'),
    (S + ['--out_dir=garbage'], 'not a readable checkpoint'),
    (S + ['--out_dir=a', '--prompt=\u2603'], 'not in this model'),
    (P + ['--input', 'empty.txt', '--tokenizer=char', '--out_dir=n2'], 'holds no text'),
    (P + ['--input', 'binary.dat', '--tokenizer=char', '--out_dir=n2'], 'not UTF-8'),
    (P + ['--input', 'nope.txt', '--tokenizer=char', '--out_dir=n2'], 'not found'),
    (P + ['--input', 'afile', '--tokenizer=char', '--out_dir=data/tiny'], 'already holds prepared data'),
    (T + ['--max_iters=0', '--out_dir=n1'], 'trains nothing'),
    (T + ['--init_from=resume', '--out_dir=a'], 'already --max_iters=40'),  # resuming a finished run
    (T + ['--init_from=run:none', '--out_dir=n1'], 'point --init_from=run:OUT_DIR at a run'),
    (S + ['--eval', '--judge=nodir/'], 'point --judge at a run'),
    (S + ['--max_len=100000000000'], 'from 1 to 1,048,576'),
    (S + ['--refresh=-1'], 'refresh=-1'),
    (S + ['--eval_out=row.json'], 'add --eval'),
    (S + ['--eval', '--judge=otherjudge', '--eval_out=a/ckpt.pt'], 'would write over a checkpoint'),
    (S + ['--out_dir=nometa'], 'no tokenizer (meta)'),
    (S + ['--infill=To be, or ___ to be!', '--stages=4:1.0'], 'has the divisors'),
    (S + ['--paper', '--order=confidence'], 'drop --order'),
    (T + ['--noise_clip={0: (0.5, 1.0)}', '--out_dir=n1'], 'its keys are block sizes'),
    (T + ["--noise_clip={4: ('a', 1)}", '--out_dir=n1'], 'must be an interval'),
    (T + ['--block_mix={4: True}', '--out_dir=n1'], 'probabilities >= 0'),
    (T + ['--out_dir=a', '--overwrite=True', '--vocab_size=5'], "prepare the data with the model's tokenizer"),  # a/log.jsonl kept
]


if not torch.cuda.is_available():
    BAD.append((T + ['--device=cuda', '--out_dir=n1'], 'sees no CUDA GPU'))


@pytest.mark.parametrize('cmd,msg', BAD, ids=[f'{c[0][:-3]}-{m[:30]}' for c, m in BAD])
def test_bad_input_is_one_line_and_changes_nothing(bad, cmd, msg):
    """Each bad input: exit code != 0, exactly one line on stderr that names the problem, no traceback, and
    nothing on disk created, changed or deleted (the trained run in a/, the data, anything)."""
    before = snapshot(bad)
    p = run_here([sys.executable, os.path.join(ROOT, cmd[0]), *cmd[1:]], bad)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and msg in lines[0] and lines[0].startswith('error: '), (cmd, p.returncode, p.stderr)
    assert not changed_files(bad, before)


@pytest.mark.slow
def test_bad_inputs_through_the_real_scripts(bad):
    """Three through a fresh Python, as a user meets them: a bad setting, the GPT-2 tokenizer with no network and no
    cached BPE files, ablate.py's default text with no network (one line that says how to get it, no data/ made)."""
    before = snapshot(bad)
    p = run_real([sys.executable, os.path.join(ROOT, 'train.py'), *TINY, '--batch_size=0', '--out_dir=n1'], bad)
    assert p.returncode == 1 and p.stderr.strip() == 'error: --batch_size=0 must be a positive integer', p.stderr
    p = run_real([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input', 'afile', '--out_dir=n2'], bad,
                 env=dict(TIKTOKEN_CACHE_DIR=str(bad / 'nocache'), HTTPS_PROXY='http://127.0.0.1:9'))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and 'TIKTOKEN_CACHE_DIR' in p.stderr, p.stderr
    p = run_real([sys.executable, os.path.join(ROOT, 'ablate.py'), '--out_dir=newabl'], bad / 'adir',
                 env=dict(HTTPS_PROXY='http://127.0.0.1:9', https_proxy='http://127.0.0.1:9'))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and 'could not download Tiny Shakespeare' in p.stderr
    assert 'input.txt' in p.stderr and 'raw.githubusercontent.com' in p.stderr
    assert not changed_files(bad, before)


def test_help_prints_the_commands_and_every_setting(tmp_path):
    for script, key in (('train.py', 'max_iters = '), ('sample.py', 'stages = '), ('ablate.py', 'finetune_iters = '),
                        ('bench.py', 'shape = '), ('ablation-tinystories/quickstart.py', 'models = ')):
        for flag in ('--help', '-h'):
            p = run_here([sys.executable, os.path.join(ROOT, script), flag], tmp_path)
            assert p.returncode == 0 and '$ python' in p.stdout and key in p.stdout and not p.stderr, (script, p.stderr)
    assert not os.listdir(tmp_path)



def test_child_reports_the_childs_error_from_its_file_not_its_output(tmp_path):
    """configurator.child, which ablate.py, gpu_check.py and quickstart.py run our scripts with: a child's fail()
    comes back as its message, even when other lines follow it; a crash as its exit status and its log."""
    from configurator import child
    script = tmp_path / 'kid.py'
    script.write_text(f"import atexit, sys\nsys.path.insert(0, {ROOT!r})\nfrom configurator import fail\n"
                      "atexit.register(print, 'error: a line printed after the error')\nprint('progress')\n"
                      "fail(sys.argv[1]) if sys.argv[1] != 'crash' else 1 / 0\n")
    seen, log = [], tmp_path / 'kid.log'
    with pytest.raises(SystemExit) as e:
        child([sys.executable, str(script), 'the real error'], str(log), seen.append)
    assert str(e.value) == 'error: kid.py: the real error'
    with pytest.raises(SystemExit) as e:
        child([sys.executable, str(script), 'again'], name='the kid at T=1')
    assert str(e.value) == 'error: the kid at T=1: again'
    assert seen[0] == 'progress\n' and 'error: a line printed after the error' in log.read_text()
    with pytest.raises(SystemExit) as e:
        child([sys.executable, str(script), 'crash'], str(log))
    assert str(e.value) == f"error: kid.py ({script} crash) exited with status 1; its output: {log}"
    assert 'ZeroDivisionError' in log.read_text()
    child([sys.executable, '-c', 'print(1)'])  # a child that succeeds: nothing raised

# -----------------------------------------------------------------------------
# sample.py: samples, --show, --infill, --max_len, --html, --eval, Ctrl-C

@pytest.mark.slow
def test_sample_py_end_to_end(tiny_run):
    tmp_path = tiny_run[0]
    cmd = [sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=a', '--num_samples=3', '--batch_size=2',
           '--stages=4:1.0,L:0.25', '--out=s.jsonl', '--show', '--prompt=ROMEO:']
    out = run_here(cmd, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in open(tmp_path / 's.jsonl')]
    meta = json.load(open(tmp_path / 'data' / 'tiny' / 'meta.json'))
    assert len(rows) == 3 and [r['seed'] for r in rows] == [1337, 1338, 1339]
    for r in rows:
        assert len(r['tokens']) == 64 and max(r['tokens']) < meta['vocab_size']  # no MASK (id vocab_size)
        assert r['text'].startswith('<|endoftext|>ROMEO:') and len(r['remasked'][0]) == math.floor(0.25 * (64 - 7))
        assert set(r['changed']) <= set(r['remasked'][0]) and len(r['conf']) == 64
    assert 'remasked tokens in {braces}' in out.stdout and '\033[' not in out.stdout  # not a terminal: no colours
    assert out.stdout.count('{') >= 1 and out.stdout.count('}') >= 1 and 'generated tokens/s' in out.stdout  # remasked, kept
    bad = run_here(cmd[:-3] + ['--stages=5:1.0'], cwd=tmp_path)
    assert bad.returncode != 0 and 'does not divide' in bad.stderr and 'Traceback' not in bad.stderr
    # --words_from prints the mean real-word rate of the samples against a text's words (no judge needed)
    from judge import real_word_rate, words
    (tmp_path / 'w.txt').write_text('the sat a ' + ' '.join(words(rows[0]['text'])[:3]))
    rated = run_here(cmd[:-3] + ['--words_from=w.txt', '--out=s.jsonl', '--overwrite=True'], cwd=tmp_path)
    vocab = set(words((tmp_path / 'w.txt').read_text()))
    rates = [real_word_rate(json.loads(line)['text'], vocab) for line in open(tmp_path / 's.jsonl')]
    want = f"real-word rate {np.mean(rates):.3f} ± {np.std(rates, ddof=1) / np.sqrt(3):.3f} (mean ± s.e. over 3 samples"
    assert rated.returncode == 0 and want in rated.stdout, rated.stdout
    # BD3-LM's entropy check on a model of 64 positions (< 256) applies to the whole sample
    red = run_here(cmd[:2] + ['--out_dir=a', '--num_samples=2', '--min_entropy=100'], cwd=tmp_path)
    assert red.returncode == 0 and 'over the whole sample): 2 of 2 samples redrawn (18 redraws), 2 still degenerate' in red.stdout


@pytest.mark.slow
def test_sample_py_infills_writes_any_length_and_a_replay_page(tiny_run):
    """--infill fills only the holes (one token per _); --max_len goes past seq_len and --stop_at_eos ends a row at
    its first <|endoftext|>; --html writes one self-contained page whose steps are the first sample's forwards."""
    tmp_path = tiny_run[0]
    S = [sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=a', '--num_samples=3', '--batch_size=3']
    text = 'the cat sat ____ the mat and ___ dog'
    out = run_here(S + [f'--infill={text}', '--out=fill.jsonl', '--show'], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    fills = list(map(json.loads, open(tmp_path / 'fill.jsonl')))
    for r in fills:
        got = r['text'].removeprefix('<|endoftext|>')
        assert len(got) == len(text) and all(a == b for a, b in zip(got, text) if b != '_')
        assert len(r['filled']) == text.count('_') and len(r['remasked'][0]) == text.count('_') // 4  # the refine
        assert set(r['changed']) <= set(r['remasked'][0])
    marks = out.stdout.count('[') - out.stdout.count('[brackets]')  # each sample's key names them once
    assert any(r['changed'] for r in fills) and marks == sum(len(r['changed']) for r in fills)  # --show marks them
    out = run_here(S + ['--max_len=150', '--stop_at_eos=True', '--stages=4:1.0,L:0.25', '--out=long.jsonl'], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    eot = json.load(open(tmp_path / 'data' / 'tiny' / 'meta.json'))['eot']
    recs = list(map(json.loads, open(tmp_path / 'long.jsonl')))
    for r in recs:
        assert r['tokens'][-1] == eot if r['stopped'] else len(r['tokens']) == 150
        assert eot not in r['tokens'][1:-1]
    n = sorted(len(r['tokens']) for r in recs)
    assert f"{sum(r['stopped'] for r in recs)} of 3 samples ended at <|endoftext|>" in out.stdout
    assert f"lengths {n[0]} / {n[1]} / {n[2]} tokens" in out.stdout, out.stdout
    # three stages: --show marks what any refine remasked, not only the last stage
    out = run_here(S[:-2] + ['--num_samples=1', '--stages=4:1.0,L:0.25,L:0.25', '--show', '--out=three.jsonl'],
                     cwd=tmp_path)
    r = json.loads(open(tmp_path / 'three.jsonl').readline())
    union = set(r['remasked'][0]) | set(r['remasked'][1])
    assert out.returncode == 0 and f"({len(r['changed'])} of {len(union)} remasked changed)" in out.stdout, out.stdout
    out = run_here(S[:-2] + ['--num_samples=1', '--stages=4:1.0,L:0.25', '--html=page.html'], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / 'page.html').read_text()
    n = 63 + 15  # the draft's forwards (one per token after <|endoftext|>) and the refine's (one per remasked token)
    assert f'wrote page.html: {n} forwards' in out.stdout and 'http' not in page and '<script src' not in page and '<link' not in page  # self-contained
    data = json.loads(re.search(r'const D = (.*?);\n', page).group(1))
    assert sum(f['kind'] == 'reveal' for f in data['frames']) == n and sum(f['kind'] == 'remask' for f in data['frames']) == 1


@pytest.mark.slow
def test_the_replay_page_steps_in_a_real_browser(tiny_run, tmp_path):
    """Headless Chromium opens the page at three steps (page.html#frame=N) and draws three different pictures."""
    chromium = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if not chromium:
        pytest.skip('no Chromium here (apt-get install chromium)')
    page = tiny_run[0] / 'page.html'
    if not page.exists():
        run_here([sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=a', '--num_samples=1', '--stages=4:1.0,L:0.25',
                    '--html=page.html'], cwd=tiny_run[0], check=True)
    shots = []
    for frame in (0, 40, 10000):
        png = tmp_path / f'{frame}.png'
        subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                        '--disable-background-networking', '--disable-component-update', '--disable-sync',
                        f'--user-data-dir={tmp_path / "profile"}', '--window-size=1000,600', f'--screenshot={png}',
                        f'file://{page}#frame={frame}'], capture_output=True, timeout=120)
        shots.append(png.read_bytes())
    assert all(s.startswith(b'\x89PNG') for s in shots) and len(set(shots)) == 3


@pytest.mark.slow
def test_ctrl_c_while_sampling_keeps_the_finished_samples(tiny_run):
    tmp_path = tiny_run[0]
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=a', '--num_samples=400', '--batch_size=1',
                          '--stages=4:1.0', '--out=part.jsonl'], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    while not os.path.exists(tmp_path / 'part.jsonl.tmp') or len(open(tmp_path / 'part.jsonl.tmp').readlines()) < 3:
        assert p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    rows = [json.loads(line) for line in open(tmp_path / 'part.jsonl')]  # valid jsonl, every row whole
    lines = err.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and f'interrupted: {len(rows)} finished samples kept in part.jsonl' in lines[0], err
    assert 3 <= len(rows) < 400 and [r['seed'] for r in rows] == list(range(1337, 1337 + len(rows)))
    # Ctrl-C before the first batch is done: an existing --out is kept as it was, not replaced by nothing
    (tmp_path / 'keep.jsonl').write_text('{"old": 1}\n')
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=a', '--num_samples=256', '--batch_size=256',
                          '--out=keep.jsonl', '--overwrite=True'], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    while not os.path.exists(tmp_path / 'keep.jsonl.tmp'):
        assert p.poll() is None
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert 'interrupted: 0 finished samples' in err, err
    assert (tmp_path / 'keep.jsonl').read_text() == '{"old": 1}\n' and not (tmp_path / 'keep.jsonl.tmp').exists()


@pytest.mark.slow
def test_gpt2_judge_path_end_to_end_with_a_tiny_local_gpt2(tiny_run):
    """The paper's judge is gpt2-large through transformers; with no network, a tiny random GPT-2 saved to a
    local folder (the real GPT-2 tokenizer, from ../shared) exercises all of that path but the download."""
    transformers = pytest.importorskip('transformers')
    bpe = os.path.join(SHARED, 'gpt2_bpe')
    if not os.path.exists(os.path.join(bpe, 'encoder.json')):
        pytest.skip('no GPT-2 BPE files in ../shared')
    tmp_path = tiny_run[0]
    from tokenizers import ByteLevelBPETokenizer  # GPT-2's byte-level BPE from its two files
    bpe_tok = ByteLevelBPETokenizer(os.path.join(bpe, 'encoder.json'), os.path.join(bpe, 'vocab.bpe'))
    bpe_tok.add_special_tokens(['<|endoftext|>'])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe_tok._tokenizer, eos_token='<|endoftext|>')
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32))
    tok.save_pretrained(tmp_path / 'tinygpt2')
    gpt.save_pretrained(tmp_path / 'tinygpt2')
    cmd = [sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=a', '--num_samples=2', '--batch_size=2',
           '--stages=4:1.0', '--eval', '--judge=tinygpt2', '--eval_out=hf.json', '--overwrite=True']
    out = run_here(cmd, cwd=tmp_path, env=dict(HF_HUB_OFFLINE='1'))
    assert out.returncode == 0, out.stderr
    row = json.load(open(tmp_path / 'hf.json'))
    assert row['scored'] == 2 and 1 < row['gen_ppl'] < 50257 * 10 and row['entropy'] > 0
    # the same numbers by hand: decode, clean up, re-encode, truncate to L = 64 tokens, score with a window of 32
    from judge import Judge, clean_up_tokenization, sample_nll
    jd = Judge(str(tmp_path / 'tinygpt2'))
    assert jd.hf and jd.ctx_len == 32
    (mean, *_), _ = jd.score(["<|endoftext|>Hello , world . It 's me", "<|endoftext|>" + "a b " * 60], 64)
    ids = [tok(clean_up_tokenization(t), add_special_tokens=False)['input_ids'][:64]
           for t in ["<|endoftext|>Hello , world . It 's me", "<|endoftext|>" + "a b " * 60]]
    assert ids[0][0] == 50256 and len(ids[1]) == 64
    per = [math.exp(n / c) for n, c in (sample_nll(jd.logits, torch.tensor(i), 50256, 32) for i in ids)]
    assert abs(mean - sum(per) / 2) < 1e-6 * mean


@pytest.mark.slow
def test_a_judge_on_compact_gpt2_ids_scores_a_model_with_the_full_vocabulary(tmp_path):
    """The judge re-encodes the decoded text, so an AR judge trained on a compact vocabulary scores the samples of a
    model with GPT-2's full one (the same stories): the row is written with every sample scored, and counts the
    samples' tokens the judge lacks (which it scores spelled in bytes, or not at all). A character judge
    of another character set is still refused (the bad-input table: 'reads other tokens')."""
    enc = gpt2_encoding()
    names = ['Tim', 'Lily', 'Ben', 'Sue']
    (tmp_path / 'ts.txt').write_text(''.join(f"Once upon a time, {names[i % 4]} saw a cat. The cat was happy.\n<|endoftext|>\n"
                                             for i in range(400)), encoding='utf-8')
    for name, extra in (('full', []), ('compact', ['--compact'])):
        run_here([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input=ts.txt', f'--out_dir=data/{name}', *extra],
                 cwd=tmp_path, check=True)
    train(tmp_path, '--dataset=compact', '--causal=True', '--out_dir=judge', '--max_iters=2', '--eval_interval=2', '--n_layer=1')
    train(tmp_path, '--dataset=full', '--out_dir=m', '--max_iters=40', '--eval_interval=40', '--n_layer=1', '--n_embd=16',
          '--learning_rate=1e-2')  # learns to write the stories' ids alone
    p = run_here([sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=m', '--num_samples=2', '--batch_size=2',
                  '--stages=4:1.0', '--eval', '--judge=judge/ckpt.pt', '--eval_out=row.json', '--out=s.jsonl'], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    row = json.load(open(tmp_path / 'row.json'))
    judge_ids = set(json.load(open(tmp_path / 'data' / 'compact' / 'meta.json'))['ids'])
    assert row['scored'] == 2 and 1 < row['gen_ppl'] < 10 * len(judge_ids), row  # a judge of two iterations: near uniform
    texts = [json.loads(line)['text'] for line in open(tmp_path / 's.jsonl')]  # the ids the judge lacks, counted
    gpt2 = [g for t in texts for part in t.split('<|endoftext|>') for g in enc.encode_ordinary(part)]
    assert row['unknown_tokens'] == sum(g not in judge_ids for g in gpt2) > 0, row  # 40 iterations: a stray id or two


@pytest.mark.slow
def test_sample_eval_with_our_own_ar_judge(tiny_run):
    tmp_path = tiny_run[0]
    train(tmp_path, '--max_iters=10', '--eval_interval=10', '--out_dir=ar', '--causal=True')
    cmd = [sys.executable, os.path.join(ROOT, 'sample.py'), '--out_dir=a', '--num_samples=4', '--batch_size=2',
           '--stages=4:1.0,L:0.25', '--eval', '--judge=ar/ckpt.pt', '--eval_out=row.json']
    out = run_here(cmd, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    row = json.load(open(tmp_path / 'row.json'))
    assert 1.0 < row['gen_ppl'] < 66 and 0 < row['entropy'] < math.log(64) and row['num_samples'] == 4
    assert row['forwards'] == 63 + 15 + 15  # draft: 63 reveals + 15 cache writes; refine: floor(0.25 * 63)
    assert '| 4:1.0,L:0.25 | snapshot | 0.25 |' in out.stdout
    # the schedules through --stages and the flags: 2 tokens per forward in the draft (flags), a refine of 5 steps
    # that reuses the fixed tokens' keys/values (stage options)
    fast = run_here(cmd[:-4] + ['--stages=4:1.0,L:0.25:steps=5:refresh=1000', '--steps=2', '--order=confidence',
                                '--eval', '--judge=ar/ckpt.pt', '--eval_out=fast.json'], cwd=tmp_path)
    assert fast.returncode == 0, fast.stderr
    row = json.load(open(tmp_path / 'fast.json'))
    # draft: 2 forwards in each of the 16 blocks + 15 cache writes, of 4 tokens each; refine: 5 forwards, the first
    # over all 64 tokens, the others over the 15 remasked positions alone
    assert row['forwards'] == 16 * 2 + 15 + 5 and row['token_forwards'] == (16 * 2 + 15) * 4 + 64 + 4 * 15
    # one rule for flags and --stages: a flag given on the command line wins over the default stages' own options
    # (the default refine: steps=4, refresh=0); --paper is did.PAPER
    for extra, name in ((['--refresh=1'], 'exact'), (['--threshold=0.9'], 'thr'), (['--paper'], 'paper')):
        p = run_here(cmd[:2] + ['--out_dir=a', '--num_samples=2', '--eval', '--judge=ar/ckpt.pt', f'--eval_out={name}.json', *extra],
                     cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    exact, thr, paper = (json.load(open(tmp_path / f'{n}.json')) for n in ('exact', 'thr', 'paper'))
    assert exact['token_forwards'] == (63 + 15) * 4 + 4 * 64  # the refine's 4 forwards over the whole sequence
    assert thr['forwards'] <= 63 + 15 + 15 and paper['forwards'] == 63 + 15 + 15  # --threshold drops the default's steps=4
    assert (paper['stages'], paper['nucleus'], paper['remask']) == ('4:1.0,L:0.25', 'bd3lm', 'snapshot')


# -----------------------------------------------------------------------------
# the quick start word for word, ablate.py, bench.py, gpu_check.py

@pytest.mark.slow
def test_readme_quick_start_works_word_for_word(tmp_path):
    """A new user's commands, copied from the README's quick start into a fresh copy of the repository: the
    download is stood in for by a copy of TinyStories put where prepare_owt.py keeps it (no network here; our
    copy from ../shared, or made-up stories in its layout), and training is cut to 2 iterations."""
    gpt2_encoding()
    for f in os.listdir(ROOT):
        if f.endswith('.py') or f == 'config':
            (shutil.copytree if f == 'config' else shutil.copy)(os.path.join(ROOT, f), tmp_path / f)
    readme = open(os.path.join(ROOT, 'README.md')).read()
    block = re.search(r'## Quick start.*?```\n(.*?)```', readme, re.S).group(1)
    cmds = [line.split('  #')[0].strip() for line in block.splitlines() if line.strip() and not line.startswith('#')]
    assert [c.split()[1] for c in cmds] == ['prepare_owt.py', 'train.py', 'sample.py'], cmds
    assert '--dataset=tinystories-valid' in cmds[0] and '--out_dir=data/tinystories' in cmds[0], cmds[0]
    os.makedirs(tmp_path / 'data' / 'tinystories')
    dest = tmp_path / 'data' / 'tinystories' / 'TinyStories-valid.txt'  # where prepare_owt.py downloads it
    ours = os.path.join(SHARED, 'text', 'tinystories', 'tinystories.txt')
    if os.path.exists(ours):
        shutil.copy(ours, dest)
    else:
        names, things = ['Tim', 'Lily', 'Ben', 'Sue'], ['ball', 'cat', 'tree', 'kite']
        dest.write_text(''.join(f"Once upon a time, there was a little kid named {names[i % 4]}. {names[i % 4]} liked the "
                                f"{things[i // 4 % 4]}. One day, {names[i % 4]} played with it all day.\n<|endoftext|>\n"
                                for i in range(3000)), encoding='utf-8')
    for cmd in cmds:
        args = shlex.split(cmd) + (['--max_iters=2', '--eval_interval=2', '--eval_iters=1'] if 'train.py' in cmd else [])
        out = run_real([sys.executable, *args[1:]], cwd=tmp_path)  # the copy's scripts import the copy's modules
        assert out.returncode == 0, (cmd, out.stderr)
    assert 'refined, changed tokens in [brackets]' in out.stdout and out.stdout.count('--- sample') == 3
    assert 'ids' in json.load(open(tmp_path / 'data' / 'tinystories' / 'meta.json'))  # the compact vocabulary


def ablate(tmp_path, *args):
    """ablate.py on a tiny model and text, training only; returns its output."""
    text = tmp_path / 't.txt'
    text.write_text('the cat sat on the mat and the dog ran far away. ' * 400)
    cmd = [sys.executable, os.path.join(ROOT, 'ablate.py'), f'--text={text}', '--out_dir=abl', '--seq_len=16',
           '--n_layer=1', '--n_head=2', '--n_embd=16', '--batch_size=2', '--judge_iters=2', '--seeds=[1]',
           '--train_only=True', *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))


@pytest.mark.slow
def test_ablate_keeps_the_papers_proportions_and_reuses_only_runs_of_the_same_settings(tmp_path):
    """By default one pretrain of 5.7 F (BD3-LM's 850K : 150K); per seed, the baseline gets F and DiD and the
    block-4-only arm 0.26 F, the first seed also an equal-budget DiD (F), all fine-tuned from that pretrain with
    BD3-LM's warmup scaled like the budgets. Every run folder is named by a hash of its settings: a rerun reuses
    exactly the runs whose settings did not change, and trains the others; committed results are safe. --beta2
    reaches the diffusion runs only (the AR judge keeps BD3-LM's 0.999)."""
    out = ablate(tmp_path, '--finetune_iters=8', '--seeds=[1, 2]', '--beta2=0.95')
    assert out.returncode == 0, out.stdout + out.stderr
    folders = list(json.load(open(tmp_path / 'abl' / 'trained.json')))  # every run of the protocol, by folder
    stamp = {f: os.path.getmtime(tmp_path / 'abl' / f / 'seconds.json') for f in folders}
    roles = [f.split('-')[0] for f in folders]
    assert sorted(roles) == ['baseline', 'baseline', 'did', 'did', 'did_equal', 'judge', 'pretrain', 'small', 'small']
    cfg = {(f.split('-')[0], c['seed']): c for f in folders
           for c in [torch.load(tmp_path / 'abl' / f / 'ckpt.pt', weights_only=False)['config']]}
    pre = cfg['pretrain', 1]  # one pretrain, shared by both seeds' fine-tunes
    assert pre['max_iters'] == round(5.7 * 8) and pre['block_mix'] == {16: 1.0} and pre['warmup_iters'] == 100
    want = {'baseline': (8, {4: 1.0}), 'did_equal': (8, {4: 0.9, 16: 0.1}), 'did': (2, {4: 0.9, 16: 0.1}), 'small': (2, {4: 1.0})}
    for (role, seed), c in cfg.items():
        if role in want:
            assert (c['max_iters'], c['block_mix'], c['warmup_iters']) == (*want[role], 1), (role, seed)
            assert c['init_from'] == 'run:' + next(f for f in folders if f.startswith('pretrain')), role
    assert {s for r, s in cfg if r == 'did_equal'} == {1} and {s for r, s in cfg if r == 'small'} == {1, 2}
    assert cfg['judge', 1]['causal'] and 'protocol: pretrain P=46, fine-tunes F=8' in out.stdout
    assert cfg['judge', 1]['beta2'] == 0.999 and all(c['beta2'] == 0.95 for (r, _), c in cfg.items() if r != 'judge')
    # the progress estimate counts each run's start-up (tiny runs are all start-up) and, with --train_only, no sampling
    left = [int(line.split('about ')[1].split()[0]) for line in out.stdout.splitlines() if 'min left' in line]
    assert left and max(left) <= 3, left
    # the first seed again with another F but the same 0.26 F (budget_frac 0.17 of 12 rounds to 2 again): the baseline
    # and the equal-budget DiD trained anew, the rest (the same settings; P given as a number) reused
    second = ablate(tmp_path, '--pretrain_iters=46', '--finetune_iters=12', '--budget_frac=0.17', '--beta2=0.95')
    assert second.returncode == 0, second.stdout + second.stderr
    used = list(json.load(open(tmp_path / 'abl' / 'trained.json')))
    reused = [f for f in used if stamp.get(f) == os.path.getmtime(tmp_path / 'abl' / f / 'seconds.json')]
    trained = [f for f in used if f not in reused]
    assert sorted(f.split('-')[0] for f in trained) == ['baseline', 'did_equal'], trained
    assert sorted(f.split('-')[0] for f in reused) == ['did', 'judge', 'pretrain', 'small'], reused
    assert set(reused) <= set(folders) and not set(folders) & set(trained)  # nothing of other settings taken
    assert all(torch.load(tmp_path / 'abl' / f / 'ckpt.pt', weights_only=False)['config']['max_iters'] == 12 for f in trained)
    (tmp_path / 'abl' / 'results.md').write_text('committed')
    third = ablate(tmp_path, '--pretrain_iters=46', '--finetune_iters=12', '--budget_frac=0.17', '--beta2=0.95')
    assert third.returncode != 0 and 'already holds results' in third.stderr
    assert (tmp_path / 'abl' / 'results.md').read_text() == 'committed'


@pytest.mark.slow
def test_bench_runs_end_to_end():
    out = run_here([sys.executable, os.path.join(ROOT, 'bench.py'), '--shape=smoke', '--vocab_size=40',
                      '--train_iters=1', '--warmup=0', '--sample_batch=2', '--long_len=64', '--device=cpu'])
    assert out.returncode == 0, out.stderr
    for line in ('block diffusion B=4', 'global B=L=32', 'AR (causal)', 'uncached draft B=4',
                 'draft + global refine gamma=0.25', 'cached / uncached at L=64'):
        assert line in out.stdout, line


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path):
    """The prepared GPU check, at its toy shape: the benchmark, the compiled sampler's rows, train.py under torchrun, the
    resume check, one JSON."""
    out = run_here([sys.executable, os.path.join(ROOT, 'gpu_check.py'), '--smoke=True', '--steps=40',
                      f'--out={tmp_path}/gpu.json', f'--work_dir={tmp_path}/w'], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.load(open(tmp_path / 'gpu.json'))
    assert r['smoke'] and r['device'] == 'cpu' and 'block diffusion B=4' in r['bench']['training']
    assert r['train']['loss_falls'] and r['train']['resumed_iterations'] == list(range(21, 41)) and r['train']['resume_exact'], r['train']
    assert all(math.isfinite(v) for v in r['train']['losses'].values())
    assert {(f['stage'], f['batch']) for f in r['floor']} == {('draft', 1), ('global', 1)} and all(f['compiled_ms'] > 0 for f in r['floor'])
    # on a machine without CUDA the real check refuses in one line
    out = run_here([sys.executable, os.path.join(ROOT, 'gpu_check.py')], cwd=tmp_path)
    if not torch.cuda.is_available():
        assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and '--smoke=True' in out.stderr
