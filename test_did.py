"""
Tests for did: fast paths against slow, obvious references, on the CPU, offline.

$ python -m pytest -q test_did.py
"""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from did import (DiD, DiDConfig, KVCache, add_noise, block_causal_mask, block_diff_mask, denoise,
                 diffusion_loss, generate, head_cross_entropy, nelbo)

ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(ROOT, '..', 'shared', 'data')
TIKTOKEN_CACHE = os.path.join(SHARED, 'gpt2_bpe', 'tiktoken_cache')
if os.path.isdir(TIKTOKEN_CACHE):
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', TIKTOKEN_CACHE)
SHAKESPEARE = os.path.join(SHARED, 'text', 'tinyshakespeare.txt')


def tiny_model(L=32, V=40, seed=0, std=0.3, n_layer=2):
    """A small float64 model with random (not zero) head weights, so outputs depend on the input."""
    torch.manual_seed(seed)
    model = DiD(DiDConfig(seq_len=L, vocab_size=V, n_layer=n_layer, n_head=2, n_embd=16)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


# -----------------------------------------------------------------------------
# attention masks

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
# forward noise

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


# -----------------------------------------------------------------------------
# the loss

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


def test_clean_future_blocks_never_change_a_noisy_block():
    model = tiny_model()
    L, B = 32, 4
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 39, (2, L), generator=g)
    x_t, _ = add_noise(x0, B, 39, generator=g)
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


# -----------------------------------------------------------------------------
# training runs through train.py, as a user runs it

def make_data(tmp_path):
    """Tiny Shakespeare as characters when ../shared is here; synthetic text otherwise."""
    if os.path.exists(SHAKESPEARE):
        src = SHAKESPEARE
    else:
        rng = np.random.default_rng(0)
        words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'dog', 'ran', 'far']
        src = tmp_path / 'synthetic.txt'
        src.write_text(' '.join(rng.choice(words, 100_000)))
    subprocess.run([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input', str(src), '--tokenizer=char',
                    f'--out_dir={tmp_path}/data/tiny'], check=True, capture_output=True)


TINY = ['--dataset=tiny', '--seq_len=64', '--n_layer=2', '--n_head=2', '--n_embd=64', '--batch_size=8',
        '--total_batch_size=512', '--block_mix={4: 0.7, 64: 0.3}', '--eval_block_sizes=[4]', '--eval_iters=2',
        '--warmup_iters=5', '--learning_rate=3e-3', '--log_interval=1', '--device=cpu', '--compile=False']


def train(tmp_path, *args, torchrun=0):
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *TINY, *args]
    if torchrun:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={torchrun}', *cmd[1:]]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    losses = {int(i): float(v) for i, v in re.findall(r'iter (\d+): loss ([\d.]+)', out.stdout)}
    return losses, out.stdout


def test_training_lowers_loss_and_resume_is_exact(tmp_path):
    make_data(tmp_path)
    # uninterrupted: 40 iterations, a checkpoint every 20
    full, log = train(tmp_path, '--max_iters=40', '--eval_interval=20', '--out_dir=a')
    val = [float(v) for v in re.findall(r'val/nelbo_B4 ([\d.]+)', log)]
    assert len(val) == 2 and val[1] < val[0] < math.log(65) and full[40] < full[1]
    # interrupted at 20, then resumed to 40: the same losses, to the last printed digit
    train(tmp_path, '--max_iters=20', '--eval_interval=20', '--out_dir=b')
    resumed, _ = train(tmp_path, '--max_iters=40', '--eval_interval=20', '--out_dir=b', '--init_from=resume')
    assert sorted(resumed) == list(range(21, 41))
    assert all(resumed[i] == full[i] for i in resumed), (resumed, full)
    # the checkpoint is complete and was written atomically (no temp file left behind)
    ckpt = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=False)
    assert ckpt['iter_num'] == 40 and {'model', 'ema', 'optimizer', 'model_args', 'config'} <= set(ckpt)
    assert not (tmp_path / 'b' / 'ckpt.pt.tmp').exists()


def test_two_process_ddp_matches_one_process(tmp_path):
    make_data(tmp_path)
    one, _ = train(tmp_path, '--max_iters=3', '--eval_interval=100', '--batch_size=4', '--out_dir=one')
    two, _ = train(tmp_path, '--max_iters=3', '--eval_interval=100', '--batch_size=4', '--out_dir=two', torchrun=2)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    assert all(abs(one[i] - two[i]) < 1e-5 for i in one), (one, two)


def test_bad_input_gives_one_clear_line(tmp_path):
    make_data(tmp_path)
    cases = [(['--dataset=nope'], 'prepare_owt.py'),
             (['--block_mix={5: 1.0}'], 'does not divide seq_len'),
             (['--block_mix={4: 0.5}'], 'sum to'),
             (['--nonsense=1'], 'unknown config key'),
             (['--init_from=resume', '--out_dir=none'], 'does not exist')]
    for args, msg in cases:
        out = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *TINY, *args], cwd=tmp_path,
                             capture_output=True, text=True)
        assert out.returncode != 0 and msg in out.stderr and 'Traceback' not in out.stderr, (args, out.stderr)
    train(tmp_path, '--max_iters=1', '--eval_interval=1', '--out_dir=c')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *TINY, '--n_layer=3', '--init_from=resume',
                          '--out_dir=c'], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and 'n_layer=2' in out.stderr and 'Traceback' not in out.stderr


def test_prepare_roundtrips_gpt2_with_eot_between_documents(tmp_path):
    tiktoken = pytest.importorskip('tiktoken')
    try:
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:  # no network and no ../shared BPE files
        pytest.skip(f'GPT-2 BPE files unavailable offline: {e}')
    docs = ["Hello world, this is the first document.\nIt has two lines.", "Second: émigré naïve 🚀 text.",
            "Third one, from jsonl."]
    (tmp_path / 'a.txt').write_text(docs[0], encoding='utf-8')
    (tmp_path / 'b.jsonl').write_text('\n'.join(json.dumps({'text': d}) for d in docs[1:]) + '\n', encoding='utf-8')
    subprocess.run([sys.executable, os.path.join(ROOT, 'prepare_owt.py'), '--input', 'a.txt', 'b.jsonl',
                    '--out_dir=out', '--val_frac=0.2'], cwd=tmp_path, check=True, capture_output=True)
    train_ids = np.fromfile(tmp_path / 'out' / 'train.bin', dtype=np.uint16)
    val_ids = np.fromfile(tmp_path / 'out' / 'val.bin', dtype=np.uint16)
    assert len(val_ids) > 0
    ids = np.concatenate([train_ids, val_ids]).tolist()
    expected = sum(([50256] + enc.encode_ordinary(d) for d in docs), [])
    assert ids == expected
    assert enc.decode(ids) == ''.join('<|endoftext|>' + d for d in docs)
    assert json.load(open(tmp_path / 'out' / 'meta.json'))['vocab_size'] == 50257
