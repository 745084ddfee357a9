"""
Sample from a trained DiD model: draft with small blocks, then refine the least-confident tokens globally.

$ python sample.py --out_dir=out-shakespeare-char --num_samples=2 --show
$ python sample.py --out_dir=out --num_samples=300 --batch_size=32 --paper --out=samples.jsonl   # the paper's sampler
$ python sample.py --out_dir=out --stages=4:1.0 --prompt="The meaning of life is"      # draft only
$ python sample.py --out_dir=out --max_len=4096 --stop_at_eos=True                   # any length, up to an <|endoftext|>
$ python sample.py --out_dir=out --infill="To be, or ______ to be: that is the ________."  # every _ is a token to fill
$ python sample.py --out_dir=out --num_samples=1 --html=replay.html                  # a page that replays the sample

--stages is a list of block_size:gamma[:option=value...]. The first stage drafts (gamma = 1: everything
masked); each later one remasks gamma of the generated tokens (chosen by --remask) and denoises them with its
block size. "L" stands for the sequence length. A stage's options (default: --steps, --order, --threshold and
--refresh) set its schedule, e.g. 4:1.0:steps=2 (two tokens per forward), L:0.25:threshold=0.9:refresh=8
(every token above 0.9 confidence per forward; the fixed tokens' keys and values refreshed every 8 forwards);
a bare third field is steps: 4:1.0:2. Each forward reveals the most confident masked position by default
(--order=confidence). --paper is the paper's sampler, did.PAPER, with which its numbers were made: 4:1.0,L:0.25, one
random masked position per forward (BD3-LM's first-hitting sampler), snapshot remasking, BD3-LM's top-p 0.9 rule.
"""

import signal
import sys
signal.signal(signal.SIGINT, lambda *_: sys.exit("error: interrupted while starting: nothing was sampled"))  # one line

import contextlib
import json
import os
import statistics
import time

import torch
from tqdm import tqdm

from configurator import check_device, configure, fail, guard
from beyond import check_long, generate_long, infill as fill_holes
from did import PAPER, Sampling, Stage, generate, generate_ar
from fast import compiled_steps
from judge import Judge, real_word_rate, unigram_entropy, words
from load import Tokenizer, ema_model, load_checkpoint
from replay import write_html

# -----------------------------------------------------------------------------
out_dir = 'out'                 # the training run whose ckpt.pt (EMA weights) to sample from
num_samples = 4                 # how many sequences
batch_size = 4                  # sequences generated together
paper = False                   # the paper's sampler, did.PAPER (4:1.0,L:0.25, random order, snapshot, top_p 0.9 as BD3-LM): sets the next eight
stages = '4:1.0,L:0.25:steps=4:refresh=0'  # draft B=4, then remask 25% and refine with one global block in 4 forwards that
                                # reuse the fixed tokens' keys/values (README: Sampling schedules); the paper: 4:1.0,L:0.25
remask = 'snapshot'             # snapshot (DiD), posthoc (score the finished draft once) or random
steps = None                    # denoising steps per block (None: one token per step); --steps, --order, --threshold: every stage's default
order = 'confidence'            # which masked positions a step reveals: confidence (the most probable draws first, LLaDA; more real words
                                # at the same cost and entropy, README: Sampling schedules) or random (BD3-LM, the paper's sampler)
threshold = None                # reveal every draw at least this probable, at least one per forward (Fast-dLLM); None: off
refresh = 1                     # global stages: recompute the fixed tokens' keys/values every r forwards (1: exact; >1 reuse them, faster; 0: at the first only)
top_p = 0.9                     # nucleus sampling (BD3-LM's setting)
nucleus = 'standard'            # 'standard' keeps the token that crosses top_p; 'bd3lm' drops it (BD3-LM's sampler, the paper's numbers)
temperature = 1.0               # 0: greedy
seed = 1337                     # sample i uses seed + i, whatever the batch size
prompt = ''                     # text after the <|endoftext|> token at position 0
min_entropy = 0.0               # BD3-LM's Gen PPL protocol: redraw (up to 10 times) a sample whose draft has 256 tokens of unigram entropy below this (BD3-LM: 4); 0: off
max_len = 0                     # > 0: sequences of up to this many tokens, beyond seq_len too (a sliding window; README: Any length)
stop_at_eos = False             # with max_len: end a sequence at its first <|endoftext|>
infill = ''                     # text whose runs of _ are holes, one token per _, filled by the global stage (README: Infilling)
out = ''                        # write samples as jsonl here as they finish (tokens, text, confidences, remasked positions)
overwrite = False               # allow --out and --html to replace an existing file
html = ''                       # write a page here that replays the first sample forward by forward
show = False                    # print each sample with what the refine stage remasked and changed highlighted
eval = False                    # score the samples: Gen PPL under --judge, unigram entropy and coherence, as one table row
eval_out = ''                   # with --eval: also write that row, every number in it, as JSON here (what ablate.py reads)
judge = 'gpt2-large'            # the paper's judge (needs transformers), a local Hugging Face folder, or an AR run (--causal=True): its out_dir or ckpt.pt
words_from = ''                 # a text file whose words count as real: print the samples' real-word rate; '' skips it
compile = False                 # run the draft and exact global forwards as compiled static-shape steps (fast.py, the same tokens):
                                # on a 2-core CPU it pays only after tens of thousands of tokens (README: Speed); not yet timed on a GPU
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'
# -----------------------------------------------------------------------------
_, given = configure(globals(), sys.argv[1:])
SAMPLER = ('stages', 'order', 'steps', 'threshold', 'refresh', 'remask', 'top_p', 'nucleus')  # what --paper sets
if paper and not set(SAMPLER) & given:  # (infilling: the global stage fills the holes, as below)
    stages = 'L:1.0,L:0.25' if infill else ','.join(f"{s.block_size}:{s.gamma}" for s in PAPER.stages)
    order, steps, threshold, refresh = (PAPER.stages[0].order, PAPER.stages[0].steps, PAPER.stages[0].threshold, PAPER.stages[0].refresh)
    remask, top_p, nucleus = PAPER.remask, PAPER.top_p, PAPER.nucleus
elif infill and 'stages' not in given:
    stages = 'L:1.0,L:0.25'  # infilling: the global stage fills the holes, then refines a quarter of them
MAX_LEN = 1 << 20               # --max_len's ceiling: the tokens and confidences of a batch are held in memory


def parse_stages(spec, L):
    """'4:1.0:2,L:0.25:threshold=0.9' -> [Stage(4, 1.0, steps=2, ...), Stage(L, 0.25, threshold=0.9, ...)]. One rule
    for the flags: --steps, --order, --threshold (and --refresh, for global stages) fill in what a stage does not
    say; a flag given on the command line also wins over the default --stages' own options."""
    out, flags = [], {'steps', 'order', 'threshold', 'refresh'} & given if 'stages' not in given else set()
    for part in str(spec).split(','):
        f = part.strip().split(':')
        try:
            bs, gamma = (L if f[0] == 'L' else int(f[0])), float(f[1])
            opts = dict(steps=steps, order=order, threshold=threshold, refresh=refresh if bs == L else 1)
            for i, kv in enumerate(f[2:]):
                k, _, v = kv.rpartition('=') if '=' in kv else ('steps' if i == 0 else '?', '', kv)
                assert k in opts
                if k not in flags:
                    opts[k] = v if k == 'order' else (float(v) if k == 'threshold' else int(v))
            if 'threshold' in flags and threshold is not None:  # a threshold decides how many a forward reveals
                opts.update({k: v for k, v in dict(steps=None, order='confidence').items() if k not in given})
            out.append(Stage(bs, gamma, **opts))
        except (AssertionError, ValueError, IndexError):
            raise ValueError(f"bad stage {part!r} in --stages; write block_size:gamma[:option=value...] with options steps, "
                             f"order, threshold, refresh, e.g. 4:1.0,L:0.25 or 4:1.0:steps=2,L:0.25:threshold=0.9")
    return out


def check_settings():
    """The settings on their own, before any file is read: one ValueError each."""
    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"--num_samples={num_samples} and --batch_size={batch_size} must be positive")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps={steps!r} must be a positive integer (or None: one token per step)")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise ValueError(f"--threshold={threshold!r} must be a probability (or None: off)")
    if not isinstance(refresh, int) or refresh < 0:
        raise ValueError(f"--refresh={refresh!r} must be an integer >= 0 (1: exact; r > 1: every r forwards; 0: the first only)")
    if not isinstance(min_entropy, (int, float)) or min_entropy < 0:
        raise ValueError(f"--min_entropy={min_entropy!r} must be a number of nats >= 0 (BD3-LM: 4; 0: off)")
    if not isinstance(max_len, int) or not 0 <= max_len <= MAX_LEN:
        raise ValueError(f"--max_len={max_len!r} must be a number of tokens from 1 to {MAX_LEN:,} (0: the model's seq_len)")
    if infill and (max_len or prompt):
        raise ValueError("--infill fills the holes of its own text: drop --max_len and --prompt")
    if stop_at_eos and not max_len:
        raise ValueError("--stop_at_eos ends sequences of any length: give --max_len too (e.g. --max_len=4096)")
    if min_entropy and (max_len or infill):
        raise ValueError("--min_entropy is BD3-LM's rule for fixed-length samples: drop it with --max_len or --infill")
    if html and max_len:
        raise ValueError("--html replays fixed-length samples and infills: drop --max_len")
    if compile and (max_len or infill):
        raise ValueError("--compile=True compiles the fixed-length sampler: drop it with --max_len or --infill")
    if paper and set(SAMPLER) & given:
        raise ValueError(f"--paper is the paper's sampler: drop {', '.join('--' + k for k in SAMPLER if k in given)} (or --paper)")
    if eval_out and not eval:
        raise ValueError("--eval_out writes the --eval row: add --eval")
    check_device(device, dtype)


def read_inputs():
    """The checkpoint, its tokenizer, the text to start from as ids and the stages, each checked against the model."""
    checkpoint = load_checkpoint(ckpt_path, device)
    causal = checkpoint['config'].get('causal', False)  # an AR model (train.py --causal=True): left to right, no stages
    if causal and (infill or max_len or html or min_entropy or compile):
        raise ValueError(f"{ckpt_path} is a causal (AR) model: it samples {checkpoint['model_args']['seq_len']} tokens left "
                         f"to right; drop --infill, --max_len, --html, --min_entropy and --compile")
    tok = Tokenizer(checkpoint['meta'])
    L, mask_id = checkpoint['model_args']['seq_len'], checkpoint['model_args']['vocab_size'] - 1
    if infill and '_' not in infill:
        raise ValueError(f"--infill={infill!r} has no hole: write each token to fill as _ (e.g. \"To be, or ___ to be\")")
    try:
        pieces = [tok.encode(p) if p else [] for p in infill.split('_')] if infill else []  # a run of k underscores: k holes
        prompt_ids = [tok.eot] + (tok.encode(prompt) if prompt else [])
    except ValueError as e:  # a character or word the model's vocabulary lacks
        raise ValueError(f"the {'infill text' if infill else 'prompt'}: {e}")
    ids = [tok.eot] + sum((([mask_id] if i else []) + p for i, p in enumerate(pieces)), []) if infill else None
    if infill and len(ids) > L:
        raise ValueError(f"--infill is {len(ids)} tokens with its holes, more than the model's seq_len={L}: shorten it")
    T = len(ids) if infill else L  # the length the stages work on ("L" in --stages)
    stage_list = parse_stages(stages, T)
    if infill and any(T % s.block_size for s in stage_list):
        raise ValueError(f"--infill's text is {T} tokens with its holes: every block size must divide it (L: the whole "
                         f"text; {T} has the divisors {[d for d in range(1, T + 1) if T % d == 0]})")
    sampling = Sampling(tuple(stage_list), remask, top_p, temperature, nucleus)
    sampling.check(T, 1 if infill else len(prompt_ids))
    if max_len:
        check_long(sampling, L, len(prompt_ids), max_len)
    return checkpoint, causal, tok, ids, prompt_ids, T, sampling


def check_output(path, what):
    """--out, --html or --eval_out: not a checkpoint (never written over), not an existing file without --overwrite,
    not a folder, in a place we can write to; nothing is left behind."""
    if os.path.basename(path) == 'ckpt.pt' or os.path.exists(path) and any(
            os.path.exists(p) and os.path.samefile(path, p) for p in (ckpt_path, judge_path)):
        raise ValueError(f"--{what}={path} would write over a checkpoint: pick another file, e.g. --{what}="
                         f"{'replay.html' if what == 'html' else 'samples.jsonl' if what == 'out' else 'row.json'}")
    if os.path.exists(path) and not os.path.isdir(path) and not overwrite:
        raise ValueError(f"--{what}={path} exists: pick another name, or pass --overwrite=True to replace it")
    if os.path.isdir(path):
        raise ValueError(f"--{what}={path} is a folder: give a file name")
    try:
        probe = f'{path}.probe{os.getpid()}'
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"cannot write --{what}={path} ({e.strerror}): pick a path in a folder you can write to")


def check_outputs(meta):
    """Every file this run writes or reads besides the checkpoint: the outputs, --words_from and the judge.
    Returns the real words (or None) and the judge (or None)."""
    named = [(p, w) for p, w in ((out, 'out'), (html, 'html'), (eval_out, 'eval_out')) if p]
    for p, w in named:
        check_output(p, w)
    for i, (p, w) in enumerate(named):
        for q, v in named[i + 1:]:
            if os.path.abspath(p) == os.path.abspath(q):
                raise ValueError(f"--{w} and --{v} both name {p}: give them two files")
    vocab = jd = None
    if words_from:
        try:
            vocab = set(words(open(words_from, encoding='utf-8').read()))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--words_from={words_from} is not a readable UTF-8 text file ({type(e).__name__}): give the training text")
    if eval:
        jd = Judge(judge_path, device)
        reencodes = jd.hf or jd.meta['tokenizer'] == meta['tokenizer'] == 'gpt2'  # it re-encodes our text, whatever the ids' map
        if not reencodes and jd.meta != meta:
            raise ValueError(f"the judge {judge_path} reads other tokens ({jd.meta['tokenizer']}, {jd.meta['vocab_size']}) than "
                             f"{ckpt_path} writes ({meta['tokenizer']}, {meta['vocab_size']}): use a judge trained on the same data")
    return vocab, jd


# everything that can be wrong is checked before the first sample is drawn
guard(check_settings)
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
judge_path = os.path.join(judge, 'ckpt.pt') if os.path.isfile(os.path.join(judge, 'ckpt.pt')) else judge
checkpoint, causal, tok, ids, prompt_ids, T, sampling = guard(read_inputs)
stage_list = sampling.at(T)
run_stages = ','.join(':'.join([f'{s.block_size}:{s.gamma}'] + [f'{k}={v}' for k, v in vars(s).items() if k not in ('block_size', 'gamma')
                                                                 and v is not None]) for s in stage_list)  # what runs, every option
vocab, jd = guard(check_outputs, checkpoint['meta'])
L, mask_id = checkpoint['model_args']['seq_len'], checkpoint['model_args']['vocab_size'] - 1
model = ema_model(checkpoint, device)
steps = compiled_steps(model) if compile else None  # compiled at its first use
ctx = contextlib.nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device.split(':')[0], dtype=getattr(torch, dtype))
mode = 'infill' if infill else f'max_len {max_len}' if max_len else f'{L} tokens'
print(f"sampling {num_samples} x {mode} from {ckpt_path} (iter {checkpoint['iter_num']}): stages {run_stages}, "
      f"remask={remask}, top_p={top_p} ({nucleus}), temperature={temperature}, seed={seed}")
if compile:
    print("--compile=True: the first batch compiles the sampler first (tens of seconds, once per run; README: Speed)")


def degenerate(draft):
    """BD3-LM's stop check in fixed-length mode: after some draft block, the last 256 tokens' unigram entropy is
    below min_entropy (the draft's tokens do not change after their block, so checking the finished draft is the same).
    A model of at most 256 positions: the whole draft after the prompt."""
    bs, gen = stage_list[0].block_size, draft[len(prompt_ids):]
    if len(draft) <= 256:
        return unigram_entropy(gen) < min_entropy
    return any(unigram_entropy(draft[e - 256:e]) < min_entropy for e in range(bs, len(draft) + 1, bs) if e > 256)


def forwards_estimate():
    """About how many forwards a batch takes (for the progress bar): one per token, or `steps` per block."""
    n = 0
    for k, s in enumerate(stage_list):
        todo = (T - len(prompt_ids) if not infill else ids.count(mask_id)) if k == 0 else int(s.gamma * (T - len(prompt_ids)))
        n += todo if s.steps is None else s.steps * (T // s.block_size)
    return n


frames = []  # the first sample's forwards, for --html
initial = [None if t == mask_id else t for t in ids] if infill else prompt_ids + [None] * (L - len(prompt_ids))


def hook(event, stage, data):
    """Progress per forward, and the first sample's replay."""
    if event == 'block':
        bar.update(data[0] - bar.n)
        return
    mask, x, conf = (data, None, None) if event == 'remask' else data
    bar.update(int(event == 'reveal'))
    if html and first_batch and (event, stage) != ('remask', 0):  # the page starts with the draft's MASKs
        pos = mask[0].nonzero().flatten().tolist()
        frames.append(dict(kind=event, stage=stage, pos=pos, **({} if event == 'remask' else dict(
            tok=x[0, pos].tolist(), conf=[round(c, 4) for c in conf[0, pos].tolist()]))))


def run(seeds):
    """Sample these seeds: one record per sequence."""
    with ctx:
        if causal:  # the AR baseline: one token per forward, nothing to refine
            res = generate_ar(model, prompt_ids, seeds, sampling)
            return [dict(seed=s, tokens=t, text=tok.decode(t), conf=[round(c, 5) for c in res['conf'][i].tolist()], remasked=[],
                         changed=[], draft=t, forwards=L - len(prompt_ids), token_forwards=sum(range(len(prompt_ids), L)),
                         stage_forwards=[]) for i, (s, t) in enumerate(zip(seeds, res['tokens'].tolist()))]
        if max_len:
            res = generate_long(model, prompt_ids, seeds, max_len, sampling, tok.eot if stop_at_eos else None, hook=hook)
            return [dict(seed=s, tokens=r['tokens'], text=tok.decode(r['tokens']), conf=[round(c, 5) for c in r['conf']],
                         remasked=[sorted(r['remasked'])], changed=[j for j, (a, b) in enumerate(zip(r['tokens'], r['draft'])) if a != b],
                         draft=r['draft'], stopped=r['stopped']) for s, r in zip(seeds, res)]
        res = fill_holes(model, ids, seeds, sampling, hook=hook) if infill else generate(model, prompt_ids, seeds, sampling, hook=hook, steps=steps)
    recs = []
    for i, s in enumerate(seeds):
        tokens, draft = res['tokens'][i].tolist(), res['history'][0][i].tolist()
        recs.append(dict(seed=s, tokens=tokens, text=tok.decode(tokens), conf=[round(c, 5) for c in res['conf'][i].tolist()],
                         remasked=[torch.nonzero(r[i]).flatten().tolist() for r in res['remasked'][1:]],
                         changed=[j for j, (a, b) in enumerate(zip(tokens, draft)) if a != b], draft=draft,
                         forwards=sum(int(st['nfe'][i] + st['cache_passes'][i]) for st in res['stats']),
                         token_forwards=sum(int(st['token_forwards'][i]) for st in res['stats']),
                         stage_forwards=[{k: int(v[i]) for k, v in st.items()} for st in res['stats']],
                         **({'filled': res['remasked'][0][i].nonzero().flatten().tolist()} if infill else {})))
    return recs


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


def show_sample(n, r):
    ids, rem = r['tokens'], set(j for stage in r['remasked'] for j in stage) | set(r.get('filled', []))
    print(f"\n--- sample {n} (seed {r['seed']})")
    key = "yellow" if color else "{braces}"
    if infill:
        print(f"filled holes in {key}, refined and changed in {'green' if color else '[brackets]'}:")
    elif len(stage_list) > 1 and not causal:
        print(f"draft, remasked tokens in {key}:\n{highlight(tok, r['draft'], [j in rem for j in range(len(ids))], [False] * len(ids), color)}")
        print(f"\nrefined, changed tokens in {'green' if color else '[brackets]'} ({len(r['changed'])} of {len(rem)} remasked changed):")
    changed = set(r['changed'])  # infill: the refine's changes (the draft it compares with has the holes filled)
    print(highlight(tok, ids, [j in rem for j in range(len(ids))], [j in changed for j in range(len(ids))], color))


samples, color = [], sys.stdout.isatty()
signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C keeps the samples already written
f = open(out + '.tmp', 'w') if out else None
t0 = time.time()
try:
    for start in range(0, num_samples, batch_size):
        first_batch = start == 0
        seeds = list(range(seed + start, seed + min(start + batch_size, num_samples)))
        with tqdm(total=max_len or forwards_estimate(), desc=f'samples {start}-{start + len(seeds) - 1}', leave=False, mininterval=2,
                  disable=not sys.stderr.isatty()) as bar:
            recs = run(seeds)
            tries = {i: 1 for i in range(len(recs))}
            first_batch = False  # the replay is of sample 0's first draw
            bad = [i for i, r in enumerate(recs) if min_entropy and degenerate(r['draft'])]
            redraws = {i: 0 for i in range(len(recs))}
            while bad:  # BD3-LM redraws a degenerate sample, with a new seed, up to 10 times in all
                again = run([seeds[i] + 1_000_003 * tries[i] for i in bad])
                for i, r in zip(bad, again):
                    recs[i], tries[i], redraws[i] = r, tries[i] + 1, redraws[i] + 1
                bad = [i for i in bad if tries[i] < 10 and degenerate(recs[i]['draft'])]
        for i, r in enumerate(recs):
            if min_entropy:
                r.update(redraws=redraws[i], degenerate=degenerate(r['draft']))
            samples.append(r)
            if f:
                f.write(json.dumps(r) + '\n')
                f.flush()
            if show:
                show_sample(len(samples) - 1, r)
except KeyboardInterrupt:
    if f:  # an existing --out is replaced only by what was sampled, never by nothing
        f.close()
        os.replace(out + '.tmp', out) if samples else os.remove(out + '.tmp')
    fail(f"interrupted: {len(samples)} finished samples {'kept in ' + out if out else 'were not saved (no --out)'}")
dt = time.time() - t0
if f:
    f.close()
    os.replace(out + '.tmp', out)
    print(f"wrote {out}")
elif not show and not eval:
    for i, s in enumerate(samples):
        print(f"\n--- sample {i}\n{s['text']}")
n_gen = sum(len(s['tokens']) for s in samples) - num_samples * (1 if infill else len(prompt_ids))
for k, stg in enumerate(stage_list if not (max_len or causal) else []):
    st = {key: sum(s['stage_forwards'][k][key] for s in samples) / num_samples for key in ('nfe', 'cache_passes', 'token_forwards')}
    print(f"stage B={stg.block_size} gamma={stg.gamma}: {st['nfe']:.1f} denoising forwards + {st['cache_passes']:.0f} cache "
          f"writes per sample, {st['token_forwards']:,.0f} token-forwards per sample")
print(f"{num_samples} samples in {dt:.1f}s: {n_gen / dt:,.0f} generated tokens/s")
if stop_at_eos:
    n = sorted(len(s['tokens']) for s in samples)
    print(f"{sum(s['stopped'] for s in samples)} of {num_samples} samples ended at <|endoftext|> before --max_len={max_len}; "
          f"lengths {n[0]} / {n[len(n) // 2]} / {n[-1]} tokens (min / median / max, with the <|endoftext|>s)")
if min_entropy:
    n_red, n_bad = sum(s['redraws'] > 0 for s in samples), sum(s['degenerate'] for s in samples)
    print(f"entropy check (BD3-LM, < {min_entropy} nats over {'256 tokens' if L > 256 else 'the whole sample'}): {n_red} of {num_samples} samples redrawn "
          f"({sum(s['redraws'] for s in samples)} redraws), {n_bad} still degenerate after 10 tries (kept)")
if html and samples:
    strings = {t: tok.decode([t]) for t in {t for t in initial if t is not None} | {t for e in frames for t in e.get('tok', [])}}
    write_html(html, initial, frames, strings, [str(s) for s in stages.split(',')], f"seed {samples[0]['seed']}, {ckpt_path}")
    print(f"wrote {html}: {sum(e['kind'] == 'reveal' for e in frames)} forwards of sample 0")
rates, rwr = [], float('nan')
if vocab is not None:  # the share of each sample's words (lowercased runs of letters) that occur in words_from
    rates = [r for r in (real_word_rate(s['text'], vocab) for s in samples) if r == r]
    rwr = sum(rates) / len(rates) if rates else float('nan')
    rwr_sem = statistics.stdev(rates) / len(rates) ** 0.5 if len(rates) > 1 else float('nan')
    print(f"real-word rate {rwr:.3f} ± {rwr_sem:.3f} (mean ± s.e. over {len(rates)} samples; words of {words_from})")

if eval:  # BD3-LM's protocol: decode, re-encode with the judge's tokenizer, score
    (mean, std, weighted, per), ents = jd.score([s['text'] for s in samples], max_len or L)
    mis, shares = jd.coherence([s['text'] for s in samples], max_len or L)  # global coherence (judge.py)
    mi, share = (statistics.fmean([x for x in v if x == x] or [float('nan')]) for v in (mis, shares))
    ent = sum(ents) / len(ents)
    n_ok = sum(p == p for p in per)  # NaN: a sample with nothing to score
    sem = std / n_ok ** 0.5 if n_ok else float('nan')
    nfe = sum(s.get('forwards', 0) for s in samples) / num_samples
    tf = sum(s.get('token_forwards', 0) for s in samples) / num_samples
    gammas = ','.join(f"{stg.gamma}" for stg in stage_list[1:]) or '-'
    print("| stages | remask | gamma | Gen PPL (mean ± s.e.) | token-weighted | entropy | real words | halves MI | names kept | forwards | token-forwards | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {'AR' if causal else stages} | {remask if len(stage_list) > 1 and not causal else '-'} | {'-' if causal else gammas} | "
          f"{mean:.2f} ± {sem:.2f} | {weighted:.2f} | {ent:.3f} | {rwr:.3f} | {mi:.3f} | {share:.3f} | {nfe:.1f} | {tf:,.0f} | {dt:.1f} |")
    if n_ok < num_samples:
        print(f"{num_samples - n_ok} samples had no token to score (all EOS) and are left out of the mean, as in BD3-LM")
    unknown = jd.unknown([s['text'] for s in samples])
    if unknown:  # a compact judge: ids its text never had (a model with more, or the decoded text re-encoded otherwise)
        print(f"{unknown} GPT-2 tokens of the samples are not in the judge's vocabulary: it scored them spelled in bytes, or not at all")
    if eval_out:
        row = dict(stages=stages, stages_run=run_stages, remask=remask, nucleus=nucleus, temperature=temperature, gen_ppl=mean, gen_ppl_std=std,
                   gen_ppl_sem=sem, gen_ppl_weighted=weighted, gen_ppls=per, entropy=ent, entropies=ents, real_word_rate=rwr,
                   real_word_rates=rates, mi=mi, mis=mis, name_share=share, name_shares=shares, forwards=nfe, token_forwards=tf,
                   seconds=dt, judge=judge, num_samples=num_samples, scored=n_ok, min_entropy=min_entropy, seed=seed, top_p=top_p,
                   checkpoint=os.path.abspath(ckpt_path), iter_num=checkpoint['iter_num'],
                   redrawn=sum(s.get('redraws', 0) > 0 for s in samples), unknown_tokens=unknown)
        json.dump(row, open(eval_out + '.tmp', 'w'))
        os.replace(eval_out + '.tmp', eval_out)  # whole, or not at all
        print(f"wrote {eval_out}")
