"""
Scoring samples: generative perplexity under a causal judge (the BD3-LM protocol), unigram entropy, the
real-word rate, and Gen PPL at a matched entropy (the fair way to compare samplers: Gen PPL rewards low entropy).
Used by sample.py --eval and ablate.py; nothing here is needed to train or sample.
"""

import json
import math
import os
import re

import numpy as np
import torch
from torch.nn import functional as F

from load import Tokenizer, ema_model, load_checkpoint

# -----------------------------------------------------------------------------
# generative perplexity and entropy

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
        tgt = ids[scored_to:end].to(logp.device)
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


# -----------------------------------------------------------------------------
# global coherence: does a sample's second half belong with its own first half? (Gen PPL is mostly local)

@torch.no_grad()
def halves_nll(logits_fn, first, second, eos):
    """Mean NLL per token (nats) of `second` (ids) after the context `first` (ids) under a causal judge; targets
    equal to eos are left out, as in Gen PPL. NaN when nothing is scored."""
    ids = torch.as_tensor(list(first) + list(second))
    logp = F.log_softmax(logits_fn(ids).double(), dim=-1)  # (T, V)
    tgt = ids[len(first):].to(logp.device)
    lp = logp[len(first) - 1:-1].gather(-1, tgt[:, None]).squeeze(-1)
    keep = tgt != eos
    return -lp[keep].mean().item() if keep.any() else float('nan')


def halves_mi(logits_fn, samples, eos, skip=16):
    """The judge's mutual information between each sample's halves, in nats per token: the NLL of the second half
    after another sample's first half (sample i's after sample i+1's, a fixed pairing) minus its NLL after its
    own first half. Near 0 when the halves are unrelated (what a writer who loses the thread produces), higher
    the more the second half follows from the first. The second half's first `skip` tokens are context in both,
    never scored: the words at the join follow from the words just before them, which is local, not global.
    samples: lists of judge ids, each starting with eos. Returns the per-sample values (NaN where nothing is
    scored; all NaN for fewer than two samples, which have no other sample to pair with)."""
    if len(samples) < 2:
        return [float('nan')] * len(samples)
    halves = [(list(s[:len(s) // 2]), list(s[len(s) // 2:])) for s in samples]
    out = []
    for i, (a, b) in enumerate(halves):
        other = [eos] + halves[(i + 1) % len(halves)][0][1:]  # the other's first half, from the same start token
        join, rest = b[:skip], b[skip:]
        out.append(halves_nll(logits_fn, other + join, rest, eos) - halves_nll(logits_fn, a + join, rest, eos))
    return out


NOT_NAMES = {'I', 'The', 'A', 'An', 'He', 'She', 'It', 'They', 'We', 'You', 'His', 'Her', 'My', 'One', 'Once', 'Then',
             'When', 'But', 'And', 'So', 'Mom', 'Dad', 'Mommy', 'Daddy'}


def names(text, anywhere=False):
    """The character names of a text: capitalized words inside a sentence (after a word, not after . ! ? or a
    quote opening a sentence), minus pronouns and the like; anywhere=True counts sentence-initial ones too."""
    found = set()
    for m in re.finditer(r"[A-Z][a-z]+", text):
        raw = text[:m.start()].rstrip()
        before = raw.rstrip('"\'\u201c')
        starts = not before or before[-1] in '.!?:>' or raw.endswith(('"', '\u201c')) or text[:m.start()].endswith('\n')
        if (anywhere or not starts) and m.group() not in NOT_NAMES:
            found.add(m.group())
    return found


def name_share(text):
    """The share of the names used inside sentences of text's second half (split at the middle word) that the
    first half already used anywhere: how often the story keeps its characters. NaN when the second half names
    nobody."""
    mid = text.find(' ', len(text) // 2)
    mid = len(text) // 2 if mid < 0 else mid
    later = names(text[mid:])
    return len(later & names(text[:mid], anywhere=True)) / len(later) if later else float('nan')


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
                raise ValueError(f"--judge={name} needs transformers: pip install transformers "
                                 f"(or pass --judge=path/to/ar_ckpt.pt, an AR model trained with --causal=True)")
            try:
                self.tok = AutoTokenizer.from_pretrained(name)
                self.model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()
            except OSError as e:
                raise ValueError(f"cannot load the judge {name} ({str(e).splitlines()[0][:150]}): it needs a "
                                 f"network the first time, or pass a local folder or --judge=path/to/ar_ckpt.pt")
            self.eos, self.ctx_len, self.meta, self.vocab = self.tok.eos_token_id, self.model.config.n_positions, None, None
            self.encode = lambda text: self.tok(text, add_special_tokens=False)['input_ids']
            self.logits = lambda ids: self.model(ids[None].to(device)).logits[0]
        else:
            ckpt = load_checkpoint(name, device, '--judge')
            if not ckpt['config'].get('causal'):
                raise ValueError(f"judge {name} is not a causal model: train one with train.py --causal=True")
            self.model = ema_model(ckpt, device)
            tok = self.vocab = Tokenizer(ckpt['meta'])
            self.meta = ckpt['meta']
            self.eos, self.ctx_len = tok.eot, self.model.config.seq_len
            self.encode = lambda text: tok.encode(text, strict=False)  # a sample's rare re-tokenization: bytes
            self.logits = lambda ids: self.model.logits(self.model.hidden(
                ids[None].to(device), torch.arange(len(ids), device=device), is_causal=True))[0, :, :tok.vocab_size]

    @torch.no_grad()
    def score(self, texts, max_len):
        """BD3-LM's protocol on decoded samples: clean up the whitespace as its batch_decode did (Hugging Face
        judges), re-encode with the judge's tokenizer, truncate to max_len tokens (the sampler's L), score.
        Returns gen_ppl's (mean, std, token-weighted, per-sample) and the unigram entropy of each sample's ids."""
        ids = self.ids(texts, max_len)
        return gen_ppl(self.logits, ids, self.eos, self.ctx_len), [unigram_entropy(s) for s in ids]

    def ids(self, texts, max_len):
        return [self.encode(clean_up_tokenization(t) if self.hf else t)[:max_len] for t in texts]

    def unknown(self, texts):
        """How many GPT-2 tokens of texts this judge's vocabulary lacks (a compact one; 0 for the others)."""
        return sum(self.vocab.unknown(t) for t in texts) if self.vocab else 0

    @torch.no_grad()
    def coherence(self, texts, max_len):
        """Per-sample global coherence: halves_mi under this judge (nats/token) and name_share of the text."""
        n = min(max_len, self.ctx_len) - 1  # one pass of the judge per scoring
        ids = [[self.eos] + s for s in self.ids([t.removeprefix('<|endoftext|>') for t in texts], n)]
        return halves_mi(self.logits, ids, self.eos), [name_share(t) for t in texts]


def load_run(model_dir, judge_path, data_dir, device='cpu'):
    """What the measurement scripts (docs/) score a run with: its EMA model, an AR judge and the data folder they
    were trained on (ablate.py's out_dir holds all three). Returns (model, judge, meta, tokenizer, the real words);
    ValueError, one line, unless all three share one character set."""
    ckpt, jd = load_checkpoint(os.path.join(model_dir, 'ckpt.pt'), device), Judge(judge_path, device)
    try:
        meta = json.load(open(os.path.join(data_dir, 'meta.json')))
        vocab = set(open(os.path.join(data_dir, 'train_words.txt')).read().split())
    except (OSError, ValueError) as e:
        raise ValueError(f"{data_dir} is not an ablate.py data folder ({type(e).__name__}): give its data/text-... folder")
    if meta != ckpt['meta'] or jd.meta != meta:
        raise ValueError(f"{model_dir}, {judge_path} and {data_dir} must share one character set")
    return ema_model(ckpt, device), jd, meta, Tokenizer(meta), vocab


# -----------------------------------------------------------------------------
# Gen PPL at a matched entropy: a sampler's frontier (one point per temperature), read off at one entropy

def at_entropy(curve, target, idx=None, key='gen_ppls', log=True):
    """Gen PPL of one sampler at mean unigram entropy `target`. curve: its rows in temperature order, each with
    the per-sample 'entropies' and 'gen_ppls' of the same samples (sample i has the same seed in every row).
    Each row is a point (mean entropy, mean Gen PPL); between the two neighbouring temperatures whose entropies
    bracket the target, log Gen PPL is interpolated linearly in entropy. target: an entropy, or a row whose mean
    entropy it is (then averaged over the same samples idx). idx: the samples to average over (a bootstrap draw;
    default all). key: another per-sample measure in place of Gen PPL, e.g. 'mis' (log=False: interpolated as it
    is, not its log). NaN when no pair of neighbours brackets the target: the sweep missed it."""
    def mean(r, key, agg=np.mean):
        v = np.asarray(r[key], float)
        return agg(v if idx is None else v[idx])
    h = mean(target, 'entropies') if isinstance(target, dict) else target
    f, inv = (math.log, math.exp) if log else (float, float)
    pts = [(mean(r, 'entropies'), f(mean(r, key, np.nanmean))) for r in curve]
    for (h0, g0), (h1, g1) in zip(pts, pts[1:]):
        if min(h0, h1) <= h <= max(h0, h1) and h0 != h1:
            return inv(g0 + (h - h0) / (h1 - h0) * (g1 - g0))
    return float('nan')


def matched_entropy(curves, target, n_boot=1000, seed=0, key='gen_ppls', log=True):
    """at_entropy for every sampler in curves {name: rows}, with a bootstrap over samples: each draw resamples the
    sample indices once, the same for every curve (they share sample seeds) and for a target row, so the draws of
    two curves give paired differences. Returns {name: estimate} and {name: draws (n_boot,)}; s.e. = boot_se(draws)."""
    n = len(next(iter(curves.values()))[0]['entropies'])
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    est = {k: at_entropy(c, target, None, key, log) for k, c in curves.items()}
    draws = {k: np.array([at_entropy(c, target, i, key, log) for i in idx]) for k, c in curves.items()}
    return est, draws


def boot_se(draws):
    """Standard error from bootstrap draws; NaN when more than a tenth of them missed the target."""
    ok = draws[~np.isnan(draws)]
    return float(ok.std(ddof=1)) if len(ok) > 0.9 * len(draws) and len(ok) > 1 else float('nan')
