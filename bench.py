"""
Benchmark training and sampling in one run, and compare the variants as ratios.

$ python bench.py                     # --shape=tiny: 4 layers x 256 wide, L=256, GPT-2 vocab (the CPU targets)
$ python bench.py --shape=owt         # 12 x 768, L=1024 (BD3-LM small): on a GPU
$ python bench.py --vocab_size=67     # the same shape with a character vocabulary
$ python bench.py --shape=owt --schedules=False --out=bench.json   # the rows gpu_check.py needs, as JSON
$ python bench.py --floor=True --out=floor.json   # the draft per forward: eager, compiled, and the matmul floor

Training: seconds per optimizer step, data tokens/s and MFU (GPU) for block diffusion at B=4 (the 2L path),
global diffusion B=L and the causal AR model, at the same shape and batch, and the bf16-autocast loss against
fp32 on one batch. Sampling: generated tokens/s of
the KV-cached draft at batch 1 and batch sample_batch, the uncached draft, and refinement at gamma 0.25/0.5
(their cost relative to the draft), plus cached vs uncached at L=long_len.
--floor=True instead: for the token protocol's 4 × 256 shape, the TinyStories GPU recipe's and BD3-LM small's, at batch 1 and
sample_batch, the time per draft forward eager and compiled (fast.py), the time of the same forwards' matmuls alone
(the floor: what a forward would cost with no overhead at all), the compile time, and the generated tokens after which
compiling has paid for itself; then the same for a global stage's forward at batch 1.
"""

import contextlib
import json
import sys
import time

import torch

from configurator import check, check_device, configure, guard
from did import DiD, DiDConfig, Sampling, Stage, add_noise, generate
from fast import compiled_steps
from mfu import attention_fraction, estimate_flops, peak_flops

# -----------------------------------------------------------------------------
shape = 'tiny'                  # 'tiny' (CPU), 'owt' (GPU) or 'smoke' (seconds)
vocab_size = 50258              # GPT-2 + MASK; a character vocabulary makes the head negligible
batch_size = 8                  # training sequences per step
train_iters = 5                 # timed training steps per variant (after warmup)
warmup = 2                      # untimed steps first
sample_batch = 32               # the batched sampler's batch (also timed at twice this)
head_std = 0.3                  # random head weights scaled so the predictive entropy is LM-like (~3 nats), see below
long_len = 1024                 # sequence length of the cached-vs-uncached comparison
skip_long = False               # skip the cached-vs-uncached comparison at long_len
train_only = False              # measure training only
schedules = True                # also time the faster sampling schedules
out = ''                        # also write every row as JSON to this file
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
compile = False                 # torch.compile the training forward
floor = False                   # only the draft and global forwards against the matmul floor, eager and compiled (see above)
floor_models = ['tiny', 'tinystories', 'bd3lm']  # which of FLOOR_MODELS
floor_blocks = 8                # draft blocks timed per row (a full draft of BD3-LM small at batch 32 takes ~10 min on a CPU)
floor_compile = True            # False: the static steps uncompiled (gpu_check.py --smoke: the script in seconds, no compile)
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
SHAPES = {'tiny': dict(n_layer=4, n_head=4, n_embd=256, seq_len=256), 'owt': dict(n_layer=12, n_head=12, n_embd=768, seq_len=1024),
          'smoke': dict(n_layer=1, n_head=2, n_embd=32, seq_len=32)}  # smoke: the tests' end-to-end run
FLOOR_MODELS = {'tiny': dict(n_layer=4, n_head=4, n_embd=256, seq_len=256, vocab_size=10559),  # config/ablate_tinystories.py
                'tinystories': dict(n_layer=12, n_head=12, n_embd=768, seq_len=256, vocab_size=10559),  # its GPU recipe
                'bd3lm': dict(n_layer=12, n_head=12, n_embd=768, seq_len=1024, vocab_size=50258),  # BD3-LM small, OWT
                'smoke': dict(n_layer=1, n_head=2, n_embd=32, seq_len=32, vocab_size=1001)}  # gpu_check.py --smoke: measures nothing


def check_settings():
    """The settings above, each wrong one told in one line with its fix, before any model is built."""
    check(shape in SHAPES, f"unknown --shape={shape}; use one of {list(SHAPES)}")
    for k, lo in (('batch_size', 1), ('train_iters', 1), ('warmup', 0), ('sample_batch', 1), ('vocab_size', 2)):
        check(globals()[k] >= lo, f"--{k}={globals()[k]} must be at least {lo}")
    check(head_std >= 0, f"--head_std={head_std} must be >= 0 (the spread of the random head weights)")
    check(skip_long or (long_len >= 8 and long_len % 4 == 0),
          f"--long_len={long_len} must be a multiple of the drafting block, 4, and at least 8")
    check(not floor or (floor_models and not set(floor_models) - set(FLOOR_MODELS) and floor_blocks >= 1),
          f"--floor_models={floor_models} must name some of {list(FLOOR_MODELS)}, and --floor_blocks={floor_blocks} be >= 1")


check_device(device, dtype)
guard(check_settings)
results = dict(device=device, dtype=dtype, shape=shape, vocab_size=vocab_size, batch_size=batch_size, training={}, sampling={})
torch.manual_seed(0)
ctx = contextlib.nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device.split(':')[0], dtype=getattr(torch, dtype))
sync = torch.cuda.synchronize if 'cuda' in device else (lambda: None)
peak = peak_flops(device)
print(f"device {device} ({torch.cuda.get_device_name() if 'cuda' in device else f'{torch.get_num_threads()} threads'}), "
      f"dtype {dtype}" + ('' if floor else f", shape {shape} {SHAPES[shape]}, vocab {vocab_size}"))


class Stop(Exception):
    pass


def forwards(model, B, stage, n, steps=None):
    """Seconds for n reveal forwards of generate's stage, the seconds of the whole call, and how many trunk forwards
    the n were (the draft's cache passes among them): the first half of the sequence is a prompt, and the clock runs
    from the first reveal to the n+1-th, so the attention sees the context a whole draft averages, without drafting
    all of it."""
    L, V = model.config.seq_len, model.config.vocab_size
    prompt = [0] + torch.randint(0, V - 1, (L // 2 - 1,), generator=torch.Generator().manual_seed(0)).tolist()
    sync()
    ticks = [time.perf_counter()]
    def hook(event, k, data):
        if event == 'reveal':
            sync()
            ticks.append(time.perf_counter())
            if len(ticks) == n + 2:
                raise Stop
    try:
        with ctx:
            generate(model, prompt, list(range(B)), Sampling((stage,), nucleus='standard'), hook=hook, steps=steps)
    except Stop:
        pass
    return ticks[-1] - ticks[1], ticks[-1] - ticks[0], n + n // stage.block_size if stage.block_size < L else n


def matmul_floor(model, B, stage, n, reps=3):
    """Seconds for the matmuls alone of forwards(model, B, stage, n), in the same order: per forward, every linear layer
    of the trunk at its rows (B x the block), then the head at one row per sequence (random order; the draft's cache
    passes have no head), on random inputs, so the weights stream through the caches as in the sampler; best of reps."""
    T = stage.block_size
    lins = [m for blk in model.h for m in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)]
    xs = [torch.randn(B * T, m.in_features, device=device) for m in lins]
    h, w_t = torch.randn(B, model.config.n_embd, device=device), model.lm_head.weight.t().contiguous()
    heads = [True] * n if T == model.config.seq_len else (([True] * T + [False]) * n)[:n + n // T]
    best = float('inf')
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        with ctx, torch.no_grad():
            for head in heads:
                for m, x in zip(lins, xs):
                    torch.nn.functional.linear(x, m.weight, m.bias)
                if head:
                    torch.addmm(model.lm_head.bias, h, w_t)
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def floor_rows():
    """The --floor=True table: per model, batch and stage, ms per forward eager / compiled / matmuls alone."""
    print(f"{'model':<12}{'stage':<8}{'batch':>6}{'eager ms':>10}{'compiled':>10}{'floor':>8}{'speedup':>9}"
          f"{'overhead eager':>16}{'compiled':>10}{'compile s':>11}{'pays after':>12}")
    for name in floor_models:
        torch.manual_seed(0)
        model = DiD(DiDConfig(**FLOOR_MODELS[name])).to(device).eval()
        with torch.no_grad():
            model.lm_head.weight.normal_(0, head_std)
        L, steps = model.config.seq_len, compiled_steps(model, floor_compile)
        cases = [(Stage(4), B, 4 * floor_blocks) for B in (1, sample_batch)] + [(Stage(L), 1, 4)]
        for stage, B, n in cases:
            eager, _, fwd = forwards(model, B, stage, n)
            _, first, _ = forwards(model, B, stage, n, steps)  # the first call compiles
            comp, comp_call, _ = min(forwards(model, B, stage, n, steps) for _ in range(2))
            eager = min(eager, forwards(model, B, stage, n)[0])
            mm = matmul_floor(model, B, stage, n)
            per_tok = lambda s: s / (n * B)  # seconds per generated token
            gain = per_tok(eager) - per_tok(comp)
            pays = (first - comp_call) / gain if gain > 0 else None  # tokens generated before the compile time is back; None: never
            r = dict(model=name, shape=FLOOR_MODELS[name], stage='draft' if stage.block_size < L else 'global', batch=B,
                     forwards=fwd, eager_ms=1e3 * eager / fwd, compiled_ms=1e3 * comp / fwd, floor_ms=1e3 * mm / fwd,
                     speedup=eager / comp, overhead_eager=1 - mm / eager, overhead_compiled=1 - mm / comp,
                     compiled_vs_floor=comp / mm, compile_s=first - comp_call, pays_after_tokens=pays,
                     eager_tok_per_s=n * B / eager, compiled_tok_per_s=n * B / comp)
            results['floor'].append(r)
            print(f"{name:<12}{r['stage']:<8}{B:>6}{r['eager_ms']:>10.2f}{r['compiled_ms']:>10.2f}{r['floor_ms']:>8.2f}"
                  f"{r['speedup']:>8.2f}x{r['overhead_eager']:>16.0%}{r['overhead_compiled']:>10.0%}{r['compile_s']:>11.1f}"
                  f"{'never' if pays is None else f'{pays:,.0f}':>12}", flush=True)


if floor:
    import torch._inductor.config
    torch._inductor.config.force_disable_caches = True  # compile times as a user's first run pays them (later runs: ~1/4)
    torch._dynamo.config.recompile_limit = 64  # 3 models x 2 batches x 2 draw reaches: past 8 graphs, eager (a log line only)
    results['floor'] = []
    print(f"the draft (blocks of 4, one token per forward, random order) and a global stage, per forward; random weights "
          f"(head std {head_std}); {floor_blocks} blocks of the draft and 4 forwards of the global stage after a prompt of L/2; best of 2")
    floor_rows()
    if out:
        json.dump(results, open(out, 'w'), indent=1)
    sys.exit(0)

cfg = DiDConfig(vocab_size=vocab_size, **SHAPES[shape])
L = cfg.seq_len
model = DiD(cfg).to(device)
fwd = torch.compile(model) if compile else model
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused='cuda' in device)
x0 = torch.randint(0, vocab_size - 1, (batch_size, L), device=device)

# training: one optimizer step per variant, same data; noise as train.py draws it (B=4: t in [0.5, 1])
print(f"\ntraining, batch {batch_size} x L={L}:")
print(f"{'variant':<22}{'s/step':>9}{'tok/s':>10}{'MFU':>7}")
rows = {}
variants = [('block diffusion B=4', 4, (0.5, 1.0)), (f'global B=L={L}', L, (1e-3, 1.0)), ('AR (causal)', 0, None)]
if 'cuda' in device:  # the FlexAttention path for the 2L mask, beside the dense SDPA one
    variants.insert(1, ('B=4, FlexAttention', 4, (0.5, 1.0)))
for name, bs, clip in variants:
    model.flex = 'Flex' in name
    g = torch.Generator(device=device).manual_seed(0)
    times, flops = [], 0.0
    for it in range(warmup + train_iters):
        sync()
        t0 = time.perf_counter()
        with ctx:
            if bs:
                x_t, t = add_noise(x0, bs, cfg.mask_id, *clip, resample=True, generator=g)
                loss = fwd(x0, x_t, t, bs)
            else:
                loss = fwd(x0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if it >= warmup:
            times.append(time.perf_counter() - t0)
            head = (x_t == cfg.mask_id).sum().item() if bs else batch_size * L
            flops += estimate_flops(model, batch_size, bs, head, attention_fraction(model, bs))
    dt = sum(times) / len(times)
    rows[name] = dt
    mfu = f"{100 * flops / sum(times) / peak:.1f}%" if peak else '-'
    print(f"{name:<22}{dt:>9.3f}{batch_size * L / dt:>10,.0f}{mfu:>7}")
    results['training'][name] = dict(s_per_step=dt, tok_per_s=batch_size * L / dt, mfu=flops / sum(times) / peak if peak else None)
model.flex = False
print(f"step time ratios: B=4 / B=L {rows['block diffusion B=4'] / rows[f'global B=L={L}']:.2f}x, "
      f"AR / B=L {rows['AR (causal)'] / rows[f'global B=L={L}']:.2f}x")
# bf16 autocast against fp32: the same batch and noise, the loss of both (autocast runs on the CPU too)
g = torch.Generator(device=device).manual_seed(1)
x_t, t = add_noise(x0, 4, cfg.mask_id, 0.5, 1.0, resample=True, generator=g)
with torch.no_grad():
    l32 = model(x0, x_t, t, 4).item()
    with torch.amp.autocast(device_type=device.split(':')[0], dtype=torch.bfloat16):
        l16 = model(x0, x_t, t, 4).item()
print(f"loss at B=4, fp32 {l32:.5f}, bf16 autocast {l16:.5f}: relative difference {abs(l16 - l32) / l32:.2e}")
results['bf16_vs_fp32'] = dict(fp32=l32, bf16=l16, rel_diff=abs(l16 - l32) / l32)


def save():
    if out:
        json.dump(results, open(out, 'w'), indent=1)


if train_only:
    save()
    sys.exit(0)


def time_generate(seq_model, n, stages, use_cache=True):
    sync()
    t0 = time.perf_counter()
    with ctx:
        res = generate(seq_model, [0], list(range(n)), Sampling(tuple(stages), nucleus='standard'), use_cache=use_cache)
    sync()
    return time.perf_counter() - t0, res


model = DiD(cfg).to(device).eval()  # a fresh random model for sampling, with a head as peaked as a trained LM's
with torch.no_grad():  # (whose entropy is about its loss, ~3 nats on OWT); a zero head's uniform 50K-way
    model.lm_head.weight.normal_(0, head_std)  # distribution would make nucleus sampling needlessly slow
    p = torch.softmax(model.logits(model.hidden(x0[:4], torch.arange(L, device=device))), -1)
    print(f"\nrandom sampling model's mean predictive entropy: {-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item():.2f} nats")
print(f"sampling, L={L}, one token per forward (first-hitting), top_p 0.9:")
print(f"{'sampler':<40}{'batch':>6}{'seconds':>9}{'tok/s':>10}{'forwards':>10}")
def row(name, n, dt, res, ref=None):
    nfe = sum(s['nfe'] + s['cache_passes'] for s in res['stats']).float().mean().item()  # per sequence
    rel = f"  {dt / ref:.2f}x the draft" if ref else ''
    print(f"{name:<40}{n:>6}{dt:>9.2f}{n * (L - 1) / dt:>10,.0f}{nfe:>10.0f}{rel}")
    results['sampling'][f'{name}, L={L}, batch {n}'] = dict(seconds=dt, tok_per_s=n * (L - 1) / dt, forwards=nfe,
                                                           vs_draft=dt / ref if ref else None)
dt1, res = time_generate(model, 1, [Stage(4)])
row('cached draft B=4', 1, dt1, res)
dtb, res = time_generate(model, sample_batch, [Stage(4)])
row('cached draft B=4', sample_batch, dtb, res)
dt2, res = time_generate(model, 2 * sample_batch, [Stage(4)])
row('cached draft B=4', 2 * sample_batch, dt2, res)
dtu, res = time_generate(model, sample_batch, [Stage(4)], use_cache=False)
row('uncached draft B=4', sample_batch, dtu, res)
for gamma in (0.25, 0.5):
    dtr, res = time_generate(model, sample_batch, [Stage(4), Stage(L, gamma)])
    row(f'draft + global refine gamma={gamma}', sample_batch, dtr, res, ref=dtb)
print(f"batched cached draft: {(L - 1) * sample_batch / dtb:,.0f} tok/s; cached / uncached: {dtu / dtb:.1f}x")
# sample.py's default: the confidence-order draft and a refine in 4 forwards that reuse the fixed tokens' keys/values
dtc, res = time_generate(model, sample_batch, [Stage(4, order='confidence')])
row('draft, 1 token/forward (conf.)', sample_batch, dtc, res, ref=dtb)
dtr, res = time_generate(model, sample_batch, [Stage(4, order='confidence'), Stage(L, 0.25, order='confidence', steps=4, refresh=0)])
row("sample.py's default (conf. draft + refine)", sample_batch, dtr, res, ref=dtc)
if schedules:  # the faster schedules (did.Stage): several tokens per forward, refines that reuse keys/values
    print(f"\nfaster schedules, batch {sample_batch} (stage options as in sample.py --stages; r = refresh):")
    dts, res = time_generate(model, sample_batch, [Stage(4, steps=2, order='confidence')])
    row('draft, 2 tokens/forward (conf.)', sample_batch, dts, res, ref=dtb)
    for name, opts in (('refine r=8', dict(refresh=8)), ('refine r=inf', dict(refresh=0)),
                       ('refine r=inf, 8 steps (conf.)', dict(refresh=0, steps=8, order='confidence')),
                       ('refine r=inf, 4 steps (conf.)', dict(refresh=0, steps=4, order='confidence')),
                       ('refine r=inf, 2 steps (conf.)', dict(refresh=0, steps=2, order='confidence')),
                       ('refine r=inf, threshold 0.9', dict(refresh=0, threshold=0.9, order='confidence'))):
        for gamma in (0.25, 0.5):
            dtr, res = time_generate(model, sample_batch, [Stage(4), Stage(L, gamma, **opts)])
            row(f'draft + {name} g={gamma}', sample_batch, dtr, res, ref=dtb)
    print("against the confidence-order draft (sample.py's default order):")
    for n in (2, 4):
        for gamma in (0.25, 0.5):
            dtr, res = time_generate(model, sample_batch, [Stage(4, order='confidence'),
                                                           Stage(L, gamma, order='confidence', steps=n, refresh=0)])
            row(f'conf. draft + refine r=inf {n} steps g={gamma}', sample_batch, dtr, res, ref=dtc)

if not skip_long:
    long_model = DiD(DiDConfig(vocab_size=vocab_size, **{**SHAPES[shape], 'seq_len': long_len})).to(device).eval()
    long_model.load_state_dict(model.state_dict())
    L = long_len
    print(f"\ncached vs uncached draft at L={long_len}, batch 1:")
    dtc, res = time_generate(long_model, 1, [Stage(4)])
    row('cached draft B=4', 1, dtc, res)
    dtu, res = time_generate(long_model, 1, [Stage(4)], use_cache=False)
    row('uncached draft B=4', 1, dtu, res)
    print(f"cached / uncached at L={long_len}: {dtu / dtc:.1f}x faster")
save()
