"""
Tokenize OpenWebText, TinyStories, or any local text, into uint16 train.bin / val.bin (+ meta.json) for train.py.

$ python prepare_owt.py                              # all of OpenWebText (needs `datasets`, ~54 GB download)
$ python prepare_owt.py --num_docs=20000             # stream only the first 20K OWT documents: minutes on a laptop
$ python prepare_owt.py --dataset=tinystories-valid --compact --out_dir=data/tinystories   # 19 MB of stories: the CPU quick start
$ python prepare_owt.py --dataset=tinystories --compact --out_dir=data/tinystories_full    # all of TinyStories (1.9 GB)
$ python prepare_owt.py --input=input.txt --out_dir=data/shakespeare                      # any text file, GPT-2 tokens
$ python prepare_owt.py --input=input.txt --tokenizer=char --out_dir=data/shakespeare_char  # or characters

Each document is encoded with tiktoken "gpt2" encode_ordinary (or as characters) and *preceded* by the
<|endoftext|> token, so a training window that starts at a document starts the way sampling does: from
<|endoftext|> at position 0 (BD3-LM's BOS). Plain-text files are one document each; .jsonl files give one
document per line (its "text" field). Validation: the last 100K OWT documents (the BD3-LM split), the last
val_frac of the documents with --num_docs, or the last val_frac of the tokens with --input. OpenWebText's
validation documents are joined with no <|endoftext|> between them, as BD3-LM's are (insert_valid_eos=False),
so a val NELBO measured on them is measured as BD3-LM's is.

TinyStories (Eldan & Li 2023) comes as the official .txt files of the Hugging Face dataset roneneldan/TinyStories,
downloaded once into --out_dir: stories separated by lines holding only <|endoftext|>. Any local .txt in that
layout (--input) is read the same way: each story a document preceded by <|endoftext|>. tinystories-valid is the
official validation file alone (21,990 stories), its last val_frac of tokens held out; tinystories is the
training file (train.bin) and the validation file (val.bin).

--compact keeps only the GPT-2 ids the prepared text uses (plus <|endoftext|>), renumbered 0..n-1, with the map
in meta.json (and so in every checkpoint): TinyStories uses ~10.6K of GPT-2's 50,257 ids, and the embedding and
head of a small model shrink by that factor. The map is taken from both splits, so validation scores every
token (an id seen only there keeps its untrained row and costs what it should) and nothing is dropped.
"""

import argparse
import json
import os
import re
import urllib.request
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

from configurator import check, fail, guard

p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
p.add_argument('--input', nargs='+', help='local .txt / .jsonl files to prepare instead of OpenWebText (offline)')
p.add_argument('--dataset', default='openwebtext', choices=['openwebtext', 'tinystories', 'tinystories-valid'],
               help='what to download and prepare when no --input is given')
p.add_argument('--compact', action='store_true', help='GPT-2 ids the text uses only, renumbered (meta.json keeps the map)')
p.add_argument('--num_docs', type=int, default=0, help='stream only the first N OpenWebText documents (0: all)')
p.add_argument('--out_dir', default='data/openwebtext', help='where train.bin, val.bin and meta.json go')
p.add_argument('--tokenizer', default='gpt2', choices=['gpt2', 'char'], help='GPT-2 BPE, or characters (tiny vocab, fast on a CPU)')
p.add_argument('--val_frac', type=float, default=0.1, help='validation fraction for --input and --num_docs')
p.add_argument('--overwrite', action='store_true', help='replace the data already in --out_dir')
p.add_argument('--num_proc', type=int, default=max(1, os.cpu_count() // 2), help='tokenizer processes')
args = p.parse_args()

enc = None
def encode(text, eot=True):  # runs in the worker processes
    global enc
    if enc is None:
        import tiktoken
        enc = tiktoken.get_encoding('gpt2')
    return np.array(([enc.eot_token] if eot else []) + enc.encode_ordinary(text), dtype=np.uint16)

EOT_LINE = re.compile(r'\n?^<\|endoftext\|>[ \t]*$\n?', re.M)
TINYSTORIES = 'https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/'


def download(name):
    """A TinyStories file into --out_dir (kept there: a rerun does not fetch it again), whole or not at all."""
    path = os.path.join(args.out_dir, name)
    if not os.path.exists(path):
        os.makedirs(args.out_dir, exist_ok=True)
        try:
            with urllib.request.urlopen(TINYSTORIES + name, timeout=60) as r, open(path + '.tmp', 'wb') as f:
                bar = tqdm(total=int(r.headers.get('Content-Length', 0)) or None, unit='B', unit_scale=True, desc=f'downloading {name}')
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
            os.replace(path + '.tmp', path)
        except BaseException as e:  # offline, Ctrl-C: nothing half-downloaded is left to be taken for the file
            if os.path.exists(path + '.tmp'):
                os.remove(path + '.tmp')
            if not isinstance(e, OSError):
                raise
            fail(f"could not download {TINYSTORIES + name} ({type(e).__name__}: {e}); offline? save "
                 f"that file as {path} yourself, or pass --input=FILE")
    return path


def read_local(paths):
    """The documents of local .txt (one each) / .jsonl (one per line, "text" field) files, or one line of error."""
    docs = []
    for path in paths:
        if not os.path.isfile(path):
            fail(f"--input file {path} not found")
        try:
            with open(path, encoding='utf-8') as f:
                if path.endswith('.jsonl'):
                    for n, line in enumerate(f, 1):
                        if line.strip():
                            try:
                                text = json.loads(line)['text']
                            except (ValueError, KeyError, TypeError):
                                fail(f"{path} line {n} is not a JSON object with a \"text\" field")
                            if not isinstance(text, str):
                                fail(f"{path} line {n}: \"text\" is a {type(text).__name__}, not a string")
                            docs.append(text)
                else:  # one document, or stories separated by <|endoftext|> lines (TinyStories' layout)
                    docs += [d for d in EOT_LINE.split(f.read()) if d.strip()]
        except UnicodeDecodeError as e:
            fail(f"{path} is not UTF-8 text (byte {e.start}): convert it, e.g. iconv -t utf-8")
        if any('\x00' in d for d in docs):
            fail(f"{path} holds NUL bytes: it looks like a binary file, not text")
    if not any(d.strip() for d in docs):
        fail(f"--input {' '.join(paths)} holds no text (an empty file is often a download that failed: "
             f"fetch it again)")
    return docs

def read_owt():
    try:
        from datasets import load_dataset
    except ImportError:
        fail("OpenWebText needs the datasets package: pip install datasets "
             "(or prepare local text offline with --input=FILE)")
    if args.num_docs:
        ds = load_dataset('openwebtext', split='train', streaming=True, trust_remote_code=True)
        return [d['text'] for d, _ in zip(ds, tqdm(range(args.num_docs), desc='downloading'))]
    return load_dataset('openwebtext', split='train', num_proc=args.num_proc, trust_remote_code=True)

def write(path, arrays, total):
    """uint16 tokens into path + '.tmp' (renamed into place once everything is written, by main)."""
    arr = np.memmap(path + '.tmp', dtype=np.uint16, mode='w+', shape=(total,))
    idx = 0
    for a in tqdm(arrays, desc=f'writing {path}'):
        arr[idx:idx + len(a)] = a
        idx += len(a)
    arr.flush()

def compact(parts):
    """Renumber the GPT-2 ids the splits use (and <|endoftext|>) as 0..n-1; meta.json's 'ids' maps them back."""
    counts = sum(np.bincount(a, minlength=50257) for arrays in parts.values() for a in arrays)
    counts[50256] += 1
    ids = np.flatnonzero(counts)
    ours = np.zeros(50257, dtype=np.uint16)
    ours[ids] = np.arange(len(ids))
    print(f"compact vocabulary: {len(ids):,} of GPT-2's 50,257 ids")
    return ({split: [ours[a] for a in arrays] for split, arrays in parts.items()},
            {'tokenizer': 'gpt2', 'vocab_size': len(ids), 'eot': int(ours[50256]), 'ids': ids.tolist()})


def tokenize(docs):
    with Pool(args.num_proc) as pool:
        return list(tqdm(pool.imap(encode, docs, chunksize=64), total=len(docs), desc='tokenizing'))


def main(docs, val_docs=None):
    docs = docs or read_owt()
    if args.tokenizer == 'char':
        chars = sorted(set(''.join(docs + (val_docs or []))))
        if len(chars) >= 65535:
            fail(f"{len(chars)} distinct characters do not fit uint16 ids: use --tokenizer=gpt2")
        eot = len(chars)  # one more id for <|endoftext|>
        stoi = {c: i for i, c in enumerate(chars)}
        toks, val_toks = ([np.array([eot] + [stoi[c] for c in d], dtype=np.uint16) for d in ds] for ds in (docs, val_docs or []))
        meta = {'tokenizer': 'char', 'vocab_size': eot + 1, 'eot': eot, 'chars': chars}
    elif isinstance(docs, list):
        toks, val_toks = tokenize(docs), tokenize(val_docs) if val_docs else []
        meta = {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}
    else:  # the full OWT dataset object: tokenize with datasets.map and write in shards (nanoGPT's recipe)
        n_val = 100_000
        splits = {'train': docs.select(range(len(docs) - n_val)), 'val': docs.select(range(len(docs) - n_val, len(docs)))}
        for split, dset in splits.items():
            eot = split == 'train'  # BD3-LM's OWT validation has no EOS between documents
            dset = dset.map(lambda ex: {'ids': (ids := encode(ex['text'], eot)), 'len': len(ids)},
                            remove_columns=['text'], desc=f'tokenizing {split}', num_proc=args.num_proc)
            total = int(np.sum(dset['len'], dtype=np.uint64))
            shards = (dset.shard(num_shards=1024, index=i, contiguous=True).with_format('numpy') for i in range(1024))
            write(os.path.join(args.out_dir, f'{split}.bin'), (np.concatenate(s['ids']) for s in shards), total)
        return {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}  # train.bin ~9.0B tokens (17 GB), val.bin ~0.2B
    if val_docs:  # TinyStories: its own validation file, each story preceded by <|endoftext|> as in training
        parts = {'train': toks, 'val': val_toks}
    elif args.input or args.dataset != 'openwebtext':  # split the token stream
        stream = np.concatenate(toks)
        n_val = max(1, int(len(stream) * args.val_frac))
        parts = {'train': [stream[:-n_val]], 'val': [stream[-n_val:]]}
    else:  # split the OWT documents; the validation ones lose their <|endoftext|>, as BD3-LM's (insert_valid_eos=False)
        n_val = max(1, int(len(toks) * args.val_frac))
        parts = {'train': toks[:-n_val], 'val': [t[1:] for t in toks[-n_val:]]}
    if args.compact:
        parts, meta = compact(parts)
    for split, arrays in parts.items():
        n = sum(len(a) for a in arrays)
        if n == 0:
            fail(f"the {split} split would be empty: give more text, or change --val_frac")
        write(os.path.join(args.out_dir, f'{split}.bin'), arrays, n)
        print(f"{split}: {n:,} tokens")
    return meta


def check_args(files):
    """Every setting, and what is already in --out_dir, before any download or work: one line, and the fix."""
    check(not os.path.exists(args.out_dir) or os.path.isdir(args.out_dir), f"--out_dir={args.out_dir} is a file: pick a folder name")
    check(args.overwrite or not any(map(os.path.exists, files)),
          f"{args.out_dir} already holds prepared data: pick another --out_dir, or pass --overwrite to replace it")
    check(0 < args.val_frac < 1, f"--val_frac={args.val_frac} must be between 0 and 1")
    check(args.num_proc >= 1, f"--num_proc={args.num_proc} must be at least 1")
    check(not args.compact or args.tokenizer == 'gpt2', "--compact renumbers GPT-2 ids; characters are compact already: drop --compact")
    check(not args.compact or args.input or args.dataset != 'openwebtext' or args.num_docs,
          "--compact needs every token in memory, too many for all of OpenWebText: use it with --num_docs, --input or a "
          "TinyStories --dataset")
    check(not args.input or args.dataset == 'openwebtext', f"--input and --dataset={args.dataset} both say what to prepare: give one")
    if args.tokenizer == 'gpt2':
        from load import gpt2_encoding
        gpt2_encoding()  # the BPE files load here (or one line of error), before any work


if __name__ == '__main__':
    files = [os.path.join(args.out_dir, f) for f in ('train.bin', 'val.bin', 'meta.json')]
    guard(check_args, files)
    created = not os.path.isdir(args.out_dir)
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        docs, val_docs = read_local(args.input) if args.input else None, None
        if args.dataset == 'tinystories-valid':
            docs = read_local([download('TinyStories-valid.txt')])
        elif args.dataset == 'tinystories':
            docs, val_docs = (read_local([download(f'TinyStories-{s}.txt')]) for s in ('train', 'valid'))
        meta = main(docs, val_docs)
        with open(files[2] + '.tmp', 'w') as f:
            json.dump(meta, f)
        for path in files:  # all three files written: put them in place together
            os.replace(path + '.tmp', path)
    except BaseException as e:  # an error, Ctrl-C: leave nothing half-written behind (and no folder we made)
        for path in files:
            if os.path.exists(path + '.tmp'):
                os.remove(path + '.tmp')
        if created and os.path.isdir(args.out_dir) and not os.listdir(args.out_dir):
            os.rmdir(args.out_dir)
        if isinstance(e, KeyboardInterrupt):
            fail("interrupted; nothing was written")
        if isinstance(e, OSError):
            fail(f"cannot write to {args.out_dir} ({e.strerror}): pick a folder you can write to")
        raise
