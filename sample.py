"""
Sample from a trained DiD model: draft with small blocks, then refine the least-confident tokens globally.

$ python sample.py --out_dir=out-shakespeare-char --num_samples=2 --show
$ python sample.py --out_dir=out --num_samples=300 --batch_size=32 --stages=4:1.0,1024:0.25 --out=samples.jsonl
$ python sample.py --out_dir=out --stages=4:1.0 --prompt="The meaning of life is"      # draft only

--stages is a list of block_size:gamma[:steps]. The first stage drafts (gamma = 1: everything masked); each
later one remasks gamma of the generated tokens (chosen by --remask) and denoises them with its block size.
"L" stands for the sequence length. steps = denoising steps per block (default: one token per step).
"""

import contextlib
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from did import DiD, DiDConfig, Judge, Tokenizer, configure, gen_ppl, generate, unigram_entropy

# -----------------------------------------------------------------------------
out_dir = 'out'                 # the training run whose ckpt.pt (EMA weights) to sample from
num_samples = 4                 # how many sequences
batch_size = 4                  # sequences generated together
stages = '4:1.0,L:0.25'         # DiD's headline setting: draft B=4, then remask 25% and refine with one global block
remask = 'snapshot'             # snapshot (DiD), posthoc (score the finished draft once) or random
steps = None                    # default denoising steps per block for stages that give none (None: one token per step)
top_p = 0.9                     # nucleus sampling (BD3-LM's setting)
temperature = 1.0
seed = 1337                     # sample i uses seed + i, whatever the batch size
prompt = ''                     # text after the <|endoftext|> token at position 0
out = ''                        # write samples as jsonl here (tokens, text, confidences, remasked positions)
show = False                    # print each sample with what the refine stage remasked and changed highlighted
eval = False                    # score the samples: Gen PPL under --judge and unigram entropy, as one table row
judge = 'gpt2-large'            # the paper's judge (needs transformers), or path/to/ckpt.pt of an AR model (--causal=True)
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])


def parse_stages(spec, L):
    """'4:1.0,L:0.25:64' -> [(4, 1.0), (L, 0.25, 64)]"""
    out = []
    for part in str(spec).split(','):
        f = part.strip().split(':')
        if len(f) not in (2, 3):
            raise SystemExit(f"error: bad stage {part!r} in --stages; write block_size:gamma[:steps], e.g. 4:1.0,L:0.25")
        bs = L if f[0] == 'L' else int(f[0])
        st = int(f[2]) if len(f) == 3 else steps
        out.append((bs, float(f[1])) if st is None else (bs, float(f[1]), st))
    return out


def highlight(tok, ids, remasked, changed):
    """Decode token by token; remasked-and-changed tokens in green, remasked-but-kept in yellow."""
    parts = []
    for i, t in enumerate(ids):
        s = tok.decode([t])
        if changed[i]:
            s = f"\033[1;32m{s}\033[0m"
        elif remasked[i]:
            s = f"\033[33m{s}\033[0m"
        parts.append(s)
    return ''.join(parts)


ckpt_path = os.path.join(out_dir, 'ckpt.pt')
if not os.path.exists(ckpt_path):
    raise SystemExit(f"error: {ckpt_path} not found: train first (python train.py ...) or pass --out_dir=RUN")
checkpoint = torch.load(ckpt_path, map_location=device, weights_only=False)
if checkpoint['config'].get('causal'):
    raise SystemExit(f"error: {ckpt_path} is a causal (AR) model; sample.py samples diffusion models")
model = DiD(DiDConfig(**checkpoint['model_args']))
model.load_state_dict(checkpoint['ema'])  # the EMA weights, as BD3-LM samples
model.eval().to(device)
tok = Tokenizer(checkpoint.get('meta', {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}))
L = model.config.seq_len
stage_list = parse_stages(stages, L)
try:
    prompt_ids = [tok.eot] + (tok.encode(prompt) if prompt else [])
except KeyError as e:
    raise SystemExit(f"error: the prompt has a character {e} that is not in this model's vocabulary")
ctx = (torch.amp.autocast(device_type='cuda', dtype={'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype])
       if 'cuda' in device and dtype != 'float32' else contextlib.nullcontext())
print(f"sampling {num_samples} x {L} tokens from {ckpt_path} (iter {checkpoint['iter_num']}): stages {stage_list}, "
      f"remask={remask}, top_p={top_p}, temperature={temperature}, seed={seed}")

samples, totals = [], [dict(nfe=0, cache_passes=0, token_forwards=0) for _ in stage_list]
t0 = time.time()
for start in tqdm(range(0, num_samples, batch_size), desc='sampling', disable=num_samples <= batch_size):
    seeds = list(range(seed + start, seed + min(start + batch_size, num_samples)))
    try:
        with ctx:
            res = generate(model, prompt_ids, seeds, stage_list, remask, top_p, temperature)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    for k, st in enumerate(res['stats']):
        for key in st:
            totals[k][key] += st[key] * len(seeds)
    for i in range(len(seeds)):
        ids = res['tokens'][i].tolist()
        rem = [torch.nonzero(r[i]).flatten().tolist() for r in res['remasked'][1:]]
        changed = (res['tokens'][i] != res['history'][0][i]).tolist()
        samples.append(dict(seed=seeds[i], tokens=ids, text=tok.decode(ids), conf=[round(c, 5) for c in res['conf'][i].tolist()],
                            remasked=rem, changed=[j for j, c in enumerate(changed) if c]))
        if show:
            any_rem = res['remasked'][-1][i] if len(stage_list) > 1 else torch.zeros(L, dtype=torch.bool)
            print(f"\n--- sample {len(samples) - 1} (seed {seeds[i]})")
            if len(stage_list) > 1:
                print(f"draft, remasked tokens in yellow:\n{highlight(tok, res['history'][0][i].tolist(), any_rem.tolist(), [False] * L)}")
                print(f"\nrefined, changed tokens in green ({sum(changed)} of {int(any_rem.sum())} remasked changed):")
            print(highlight(tok, ids, any_rem.tolist(), changed))
dt = time.time() - t0
n_gen = num_samples * (L - len(prompt_ids))
for (bs, gamma, *_), st in zip(stage_list, totals):
    print(f"stage B={bs} gamma={gamma}: {st['nfe'] / num_samples:.0f} denoising forwards + {st['cache_passes'] / num_samples:.0f} "
          f"cache writes per sample, {st['token_forwards'] / num_samples:,.0f} token-forwards per sample")
print(f"{num_samples} samples in {dt:.1f}s: {n_gen / dt:,.0f} generated tokens/s")
if out:
    with open(out, 'w') as f:
        for s in samples:
            f.write(json.dumps(s) + '\n')
    print(f"wrote {out}")
elif not show and not eval:
    for i, s in enumerate(samples):
        print(f"\n--- sample {i}\n{s['text']}")

if eval:  # BD3-LM's protocol: decode, re-encode with the judge's tokenizer, score; no low-entropy rejection
    jd = Judge(judge, device)
    ids = [jd.encode(s['text']) for s in samples]
    mean, std, weighted, per = gen_ppl(jd.logits, ids, jd.eos, jd.ctx_len)
    ent = sum(unigram_entropy(i) for i in ids) / len(ids)
    nfe = sum(st['nfe'] + st['cache_passes'] for st in totals) / num_samples
    tf = sum(st['token_forwards'] for st in totals) / num_samples
    gammas = ','.join(f"{g}" for _, g, *_ in stage_list[1:]) or '-'
    print("| stages | remask | gamma | Gen PPL (mean ± std) | token-weighted | entropy | forwards | token-forwards | seconds | samples/s |")
    print(f"| {stages} | {remask if len(stage_list) > 1 else '-'} | {gammas} | {mean:.2f} ± {std:.2f} | {weighted:.2f} | "
          f"{ent:.3f} | {nfe:.0f} | {tf:,.0f} | {dt:.1f} | {num_samples / dt:.2f} |")
    print(json.dumps(dict(stages=stages, remask=remask, gen_ppl=mean, gen_ppl_std=std, gen_ppl_weighted=weighted, entropy=ent,
                          forwards=nfe, token_forwards=tf, seconds=dt, judge=judge, num_samples=num_samples)))
