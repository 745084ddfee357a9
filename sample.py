"""
Sample from a trained DiD model: draft with small blocks, then refine the least-confident tokens globally.

$ python sample.py --out_dir=out-shakespeare-char --num_samples=2 --show
$ python sample.py --out_dir=out --num_samples=300 --batch_size=32 --stages=4:1.0,1024:0.25 --out=samples.jsonl
$ python sample.py --out_dir=out --stages=4:1.0 --prompt="The meaning of life is"      # draft only

--stages is a list of block_size:gamma[:option=value...]. The first stage drafts (gamma = 1: everything
masked); each later one remasks gamma of the generated tokens (chosen by --remask) and denoises them with its
block size. "L" stands for the sequence length. A stage's options (default: --steps, --order, --threshold and
--refresh) set its schedule, e.g. 4:1.0:steps=2 (two tokens per forward), L:0.25:threshold=0.9:refresh=8
(every token above 0.9 confidence per forward; the fixed tokens' keys and values refreshed every 8 forwards);
a bare third field is steps: 4:1.0:2. Each forward reveals the most confident masked position by default
(--order=confidence); --order=random --nucleus=bd3lm is BD3-LM's sampler, with which the paper's numbers were made.
"""

import contextlib
import json
import os
import statistics
import sys
import time

import torch
from tqdm import tqdm

from did import (DiD, DiDConfig, Judge, Tokenizer, check_device, check_sampling, configure, generate, load_checkpoint,
                 real_word_rate, words)

# -----------------------------------------------------------------------------
out_dir = 'out'                 # the training run whose ckpt.pt (EMA weights) to sample from
num_samples = 4                 # how many sequences
batch_size = 4                  # sequences generated together
stages = '4:1.0,L:0.25:steps=4:refresh=0'  # draft B=4, then remask 25% and refine with one global block in 4 forwards that
                                # reuse the fixed tokens' keys/values (README: Sampling schedules); the paper: 4:1.0,L:0.25
remask = 'snapshot'             # snapshot (DiD), posthoc (score the finished draft once) or random
steps = None                    # denoising steps per block (None: one token per step); these four are the defaults of every stage
order = 'confidence'            # which masked positions a step reveals: confidence (the most probable draws first, LLaDA; more real words
                                # at the same cost and entropy, README: Sampling schedules) or random (BD3-LM, the paper's sampler)
threshold = None                # reveal every draw at least this probable, at least one per forward (Fast-dLLM); None: off
refresh = 1                     # global stages: recompute the fixed tokens' keys/values every r forwards (1: exact; >1 reuse them, faster; 0: never)
top_p = 0.9                     # nucleus sampling (BD3-LM's setting)
nucleus = 'standard'            # 'standard' keeps the token that crosses top_p; 'bd3lm' drops it (BD3-LM's sampler, the paper's numbers)
temperature = 1.0               # 0: greedy
seed = 1337                     # sample i uses seed + i, whatever the batch size
prompt = ''                     # text after the <|endoftext|> token at position 0
out = ''                        # write samples as jsonl here (tokens, text, confidences, remasked positions)
overwrite = False               # allow --out to replace an existing file
show = False                    # print each sample with what the refine stage remasked and changed highlighted
eval = False                    # score the samples: Gen PPL under --judge and unigram entropy, as one table row
judge = 'gpt2-large'            # the paper's judge (needs transformers), a local Hugging Face folder, or path/to/ckpt.pt of an AR model (--causal=True)
words_from = ''                 # a text file whose words count as real: print the samples' real-word rate; '' skips it
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])


def fail(msg):
    sys.exit(f"error: {msg}")


def parse_stages(spec, L):
    """'4:1.0:2,L:0.25:threshold=0.9' -> [(4, 1.0, {steps: 2, ...}), (L, 0.25, {threshold: 0.9, ...})], the flags
    filling in what a stage does not say."""
    out = []
    for part in str(spec).split(','):
        f = part.strip().split(':')
        try:
            bs, gamma = (L if f[0] == 'L' else int(f[0])), float(f[1])
            opts = dict(steps=steps, order=order, threshold=threshold, refresh=refresh)
            for i, kv in enumerate(f[2:]):
                k, _, v = kv.rpartition('=') if '=' in kv else ('steps' if i == 0 else '?', '', kv)
                assert k in opts
                opts[k] = v if k == 'order' else (float(v) if k == 'threshold' else int(v))
            out.append((bs, gamma, opts))
        except (AssertionError, ValueError, IndexError):
            fail(f"bad stage {part!r} in --stages; write block_size:gamma[:option=value...] with options steps, "
                 f"order, threshold, refresh, e.g. 4:1.0,L:0.25 or 4:1.0:steps=2,L:0.25:threshold=0.9")
    return out


def highlight(tok, ids, remasked, changed, color):
    """Decode token by token; remasked-and-changed tokens in green (or [x] without a terminal), remasked-but-kept
    ones in yellow (or {x}); their spaces and newlines are drawn as · and ↵ so an edit of one is visible too."""
    parts = []
    for i, t in enumerate(ids):
        s = tok.decode([t])
        if changed[i] or remasked[i]:
            s = s.replace(' ', '·').replace('\n', '↵\n')
            if color:
                s = f"\033[1;32m{s}\033[0m" if changed[i] else f"\033[33m{s}\033[0m"
            else:
                s = f"[{s}]" if changed[i] else f"{{{s}}}"
        parts.append(s)
    return ''.join(parts)


# everything that can be wrong is checked before the first sample is drawn
if num_samples <= 0 or batch_size <= 0:
    fail(f"--num_samples={num_samples} and --batch_size={batch_size} must be positive")
if steps is not None and (not isinstance(steps, int) or steps < 1):
    fail(f"--steps={steps!r} must be a positive integer (or None: one token per step)")
if threshold is not None and not isinstance(threshold, (int, float)):
    fail(f"--threshold={threshold!r} must be a probability (or None: off)")
check_device(device, dtype)
checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'), device)
if checkpoint['config'].get('causal'):
    fail(f"{out_dir}/ckpt.pt is a causal (AR) model; sample.py samples diffusion models")
tok = Tokenizer(checkpoint.get('meta', {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}))
L = checkpoint['model_args']['seq_len']
stage_list = parse_stages(stages, L)
try:
    prompt_ids = [tok.eot] + (tok.encode(prompt) if prompt else [])
except KeyError as e:
    fail(f"the prompt has a character {e} that is not in this model's vocabulary")
try:
    check_sampling(stage_list, L, len(prompt_ids), remask, top_p, temperature, nucleus)
except ValueError as e:
    fail(str(e))
if out:
    if os.path.exists(out) and not overwrite:
        fail(f"--out={out} exists: pick another name, or pass --overwrite=True to replace it")
    try:  # writable? (the samples are written only at the end; find out now)
        open(out + '.tmp', 'w').close()
        os.remove(out + '.tmp')
    except OSError as e:
        fail(f"cannot write --out={out} ({e.strerror}): pick a path in a folder you can write to")
if words_from and not os.path.isfile(words_from):
    fail(f"--words_from={words_from} not found: give the training text (or drop --words_from)")
jd = Judge(judge, device) if eval else None

model = DiD(DiDConfig(**checkpoint['model_args']))
model.load_state_dict(checkpoint['ema'])  # the EMA weights, as BD3-LM samples
model.eval().to(device)
ctx = (torch.amp.autocast(device_type='cuda', dtype={'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype])
       if 'cuda' in device and dtype != 'float32' else contextlib.nullcontext())
print(f"sampling {num_samples} x {L} tokens from {out_dir}/ckpt.pt (iter {checkpoint['iter_num']}): stages {stages}, "
      f"remask={remask}, top_p={top_p} ({nucleus}), temperature={temperature}, seed={seed}")

samples, totals = [], [dict(nfe=0, cache_passes=0, token_forwards=0) for _ in stage_list]
color = sys.stdout.isatty()
t0 = time.time()
for start in tqdm(range(0, num_samples, batch_size), desc='sampling', disable=num_samples <= batch_size):
    seeds = list(range(seed + start, seed + min(start + batch_size, num_samples)))
    with ctx:
        res = generate(model, prompt_ids, seeds, stage_list, remask, top_p, temperature, nucleus=nucleus)
    for k, st in enumerate(res['stats']):
        for key in st:
            totals[k][key] += int(st[key].sum())  # per-row counts, summed
    for i in range(len(seeds)):
        ids = res['tokens'][i].tolist()
        rem = [torch.nonzero(r[i]).flatten().tolist() for r in res['remasked'][1:]]
        changed = (res['tokens'][i] != res['history'][0][i]).tolist()
        samples.append(dict(seed=seeds[i], tokens=ids, text=tok.decode(ids), conf=[round(c, 5) for c in res['conf'][i].tolist()],
                            remasked=rem, changed=[j for j, c in enumerate(changed) if c],
                            forwards=sum(int(st['nfe'][i] + st['cache_passes'][i]) for st in res['stats'])))
        if show:
            any_rem = res['remasked'][-1][i] if len(stage_list) > 1 else torch.zeros(L, dtype=torch.bool)
            print(f"\n--- sample {len(samples) - 1} (seed {seeds[i]})")
            if len(stage_list) > 1:
                key = "yellow" if color else "{braces}"
                print(f"draft, remasked tokens in {key}:\n{highlight(tok, res['history'][0][i].tolist(), any_rem.tolist(), [False] * L, color)}")
                print(f"\nrefined, changed tokens in {'green' if color else '[brackets]'} "
                      f"({sum(changed)} of {int(any_rem.sum())} remasked changed):")
            print(highlight(tok, ids, any_rem.tolist(), changed, color))
dt = time.time() - t0
n_gen = num_samples * (L - len(prompt_ids))
for (bs, gamma, *_), st in zip(stage_list, totals):
    print(f"stage B={bs} gamma={gamma}: {st['nfe'] / num_samples:.1f} denoising forwards + {st['cache_passes'] / num_samples:.0f} "
          f"cache writes per sample, {st['token_forwards'] / num_samples:,.0f} token-forwards per sample")
print(f"{num_samples} samples in {dt:.1f}s: {n_gen / dt:,.0f} generated tokens/s")
if out:
    with open(out + '.tmp', 'w') as f:
        for s in samples:
            f.write(json.dumps(s) + '\n')
    os.replace(out + '.tmp', out)
    print(f"wrote {out}")
elif not show and not eval:
    for i, s in enumerate(samples):
        print(f"\n--- sample {i}\n{s['text']}")
rates, rwr = [], float('nan')
if words_from:  # the share of each sample's words (lowercased runs of letters) that occur in words_from
    vocab = set(words(open(words_from, encoding='utf-8').read()))
    rates = [r for r in (real_word_rate(s['text'], vocab) for s in samples) if r == r]
    rwr = sum(rates) / len(rates) if rates else float('nan')
    rwr_sem = statistics.stdev(rates) / len(rates) ** 0.5 if len(rates) > 1 else float('nan')
    print(f"real-word rate {rwr:.3f} ± {rwr_sem:.3f} (mean ± s.e. over {len(rates)} samples; words of {words_from})")

if eval:  # BD3-LM's protocol: decode, re-encode with the judge's tokenizer, score; no low-entropy rejection
    (mean, std, weighted, per), ent = jd.score([s['text'] for s in samples], L)
    n_ok = sum(p == p for p in per)  # NaN: a sample with nothing to score
    sem = std / n_ok ** 0.5 if n_ok else float('nan')
    nfe = sum(st['nfe'] + st['cache_passes'] for st in totals) / num_samples
    tf = sum(st['token_forwards'] for st in totals) / num_samples
    gammas = ','.join(f"{g}" for _, g, *_ in stage_list[1:]) or '-'
    print("| stages | remask | gamma | Gen PPL (mean ± s.e.) | token-weighted | entropy | real words | forwards | token-forwards | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {stages} | {remask if len(stage_list) > 1 else '-'} | {gammas} | {mean:.2f} ± {sem:.2f} | {weighted:.2f} | "
          f"{ent:.3f} | {rwr:.3f} | {nfe:.1f} | {tf:,.0f} | {dt:.1f} |")
    if n_ok < num_samples:
        print(f"{num_samples - n_ok} samples had no token to score (all EOS) and are left out of the mean, as in BD3-LM")
    print(json.dumps(dict(stages=stages, remask=remask, nucleus=nucleus, gen_ppl=mean, gen_ppl_std=std, gen_ppl_sem=sem,
                          gen_ppl_weighted=weighted, gen_ppls=per, entropy=ent, real_word_rate=rwr, real_word_rates=rates,
                          forwards=nfe, token_forwards=tf, seconds=dt, judge=judge, num_samples=num_samples, scored=n_ok)))
