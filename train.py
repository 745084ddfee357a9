"""
Train a Diffusion-in-Diffusion model (mix-scale block diffusion), or the AR baseline with causal=True.

On one GPU, or on the CPU (the device is picked automatically):
$ python train.py config/train_did_owt.py
$ python train.py config/train_shakespeare_char.py            # minutes on a laptop CPU
On 8 GPUs of one node with DDP:
$ torchrun --standalone --nproc_per_node=8 train.py config/train_did_owt.py
Resume exactly where a run stopped (its saved config is the default; Ctrl-C saves and stops), or only
evaluate its checkpoint at any block size:
$ python train.py --out_dir=out-did-owt --init_from=resume
$ python train.py --out_dir=out-did-owt --init_from=resume --eval_only=True --eval_block_sizes="[4, 16, 1024]"
Fine-tune another run's model (its weights and EMA, a fresh optimizer, iterations from 0, a new out_dir):
$ python train.py config/train_shakespeare_char.py --init_from=run:out-pretrain --out_dir=out-finetune
"""

import atexit
import contextlib
import copy
import importlib.util
import json
import math
import os
import signal
import sys
import time
signal.signal(signal.SIGINT, lambda *_: sys.exit("error: interrupted while starting: no training ran"))  # one line, not a traceback

import numpy as np
import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import check, check_device, configure, fail, guard
from did import DiD, DiDConfig, add_noise, clipped_schedule_search, diffusion_loss, nelbo, search_intervals
from load import load_bd3lm, load_checkpoint
from mfu import attention_fraction, estimate_flops, peak_flops as peak_flops_of  # peak_flops is also a setting here

# -----------------------------------------------------------------------------
# default config values: the paper's OWT shape (BD3-LM small, L=1024, mix-scale 4/1024)
# I/O
out_dir = 'out'                 # checkpoints go to out_dir/ckpt.pt
eval_interval = 1000            # evaluate and checkpoint every this many iterations
log_interval = 10               # print training stats every this many iterations
eval_iters = 20                 # fixed, seeded batches per split for the NELBO estimate
eval_only = False               # evaluate the model given by init_from and exit
init_from = 'scratch'           # 'scratch', 'resume' (out_dir/ckpt.pt), 'run:OTHER_OUT_DIR' (fine-tune another run) or 'bd3lm:kuleshov-group/bd3lm-owt-block_size1024-pretrain' (or a local dir)
overwrite = False               # allow a run from scratch (or a fine-tune) to replace an existing out_dir/ckpt.pt
wandb_log = False               # log to Weights & Biases (optional package)
wandb_project = 'did'
wandb_run_name = 'did'
# data
dataset = 'openwebtext'         # reads data/<dataset>/train.bin and val.bin (uint16), written by prepare_owt.py
tokenizer = ''                  # '', 'gpt2' or 'char': the tokenizer the config expects (checked against data/<dataset>/meta.json; '' takes the data's)
bos = True                      # every sequence starts with <|endoftext|> at position 0, never masked or scored (BD3-LM's ignore_bos; sampling starts from it)
clean_first = False             # with bos=False: the window's own first token is kept unmasked and unscored instead (BD3-LM's OWT scripts)
doc_start = False               # windows begin at a document's first token (after an <|endoftext|>), as a sample does; False: anywhere (nanoGPT, BD3-LM)
total_batch_size = 512 * 1024   # tokens per optimizer step; gradient accumulation is derived from it
batch_size = 16                 # sequences per micro-step per process
# model
seq_len = 1024                  # L
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0                   # residual dropout (BD3-LM: 0.1)
vocab_size = None               # None: data/<dataset>/meta.json's vocab size + 1 (MASK), else GPT-2's 50258
# diffusion
causal = False                  # True: train a causal next-token model (AR baseline, or a Gen PPL judge)
block_mix = {4: 0.9, 1024: 0.1}  # DiD's mix-scale training: block size -> probability, one draw per micro-step
noise_clip = {4: (0.5, 1.0)}    # clipped t interval per block size (BD3-LM's schedule for B=4); others: (1e-3, 1)
noise_search = False            # BD3-LM's clipped-schedule search: set each small block size's interval to the candidate with the lowest loss variance
search_interval = 10000         # run it every this many iterations (BD3-LM: with each validation, every 10K steps); a multiple of eval_interval
search_seqs = 12800             # validation sequences it scores per candidate, split over the processes (BD3-LM: 100 batches x 16 x 8 GPUs)
resample = True                 # redraw blocks whose realized masked fraction leaves the clipped interval
eval_block_sizes = [4, 1024]    # report the validation NELBO at these block sizes (0 = AR loss)
# optimizer (BD3-LM: AdamW lr 3e-4, betas (0.9, 0.999), no weight decay, warmup then constant)
learning_rate = 3e-4            # peak learning rate
max_iters = 40000               # total optimizer steps
warmup_iters = 2500             # linear warmup, then constant
decay_lr = False                # cosine decay from warmup_iters to max_iters down to learning_rate / 10 (nanoGPT); BD3-LM keeps it constant
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0                 # clip the global gradient norm at this value; 0 disables
ema_decay = 0.9999              # EMA of the weights, used for evaluation and sampling
# system
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'  # or 'float16'
compile = torch.cuda.is_available()  # torch.compile the model (PyTorch 2.0+)
flex = torch.cuda.is_available()  # FlexAttention for the 2L block-diffusion mask (CUDA); dense SDPA otherwise
peak_flops = 0.0                # one device's peak FLOP/s for MFU; 0: looked up from the GPU's name (bf16 dense)
seed = 1337
# -----------------------------------------------------------------------------
config_keys, given = configure(globals(), sys.argv[1:])  # apply config/*.py files, then --key=value overrides
RUN_KEYS = ('out_dir', 'init_from', 'eval_only', 'overwrite', 'device', 'dtype', 'compile', 'flex', 'peak_flops')


def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_config():
    """The settings on their own, before any file is read: one ValueError each."""
    for k in ('batch_size', 'total_batch_size', 'seq_len', 'n_layer', 'n_head', 'n_embd', 'eval_interval', 'log_interval',
              'eval_iters', 'search_interval', 'search_seqs'):
        check(globals()[k] > 0, f"--{k}={globals()[k]} must be a positive integer")
    for k in ('max_iters', 'warmup_iters', 'grad_clip', 'weight_decay', 'peak_flops'):
        check(globals()[k] >= 0, f"--{k}={globals()[k]} must not be negative")
    check(max_iters > 0 or eval_only, "--max_iters=0 trains nothing: give a number of iterations (or --eval_only=True)")
    check(learning_rate > 0, f"--learning_rate={learning_rate} must be positive")
    check(0 <= dropout < 1 and 0 <= ema_decay < 1 and 0 <= beta1 < 1 and 0 <= beta2 < 1,
          "dropout, ema_decay, beta1 and beta2 must lie in [0, 1)")
    check(n_embd % n_head == 0 and (n_embd // n_head) % 2 == 0,
          f"n_embd={n_embd} must split into n_head={n_head} heads of an even size (rotary embeddings)")
    check_device(device, dtype)
    check(init_from in ('scratch', 'resume') or init_from.startswith(('bd3lm:', 'run:')),
          f"unknown --init_from={init_from!r}: use scratch, resume, run:OUT_DIR or bd3lm:REPO_OR_DIR")
    check(not eval_only or init_from != 'scratch',
          "--eval_only=True evaluates a trained model: add --init_from=resume (or run:OUT_DIR, bd3lm:REPO)")
    check(not wandb_log or eval_only or importlib.util.find_spec('wandb'), "wandb_log=True needs the wandb package: pip install wandb, or drop --wandb_log")
    if causal:
        return
    check(isinstance(block_mix, dict) and block_mix and all(number(p) and p >= 0 for p in block_mix.values()),
          f"--block_mix={block_mix!r} must map block sizes to probabilities >= 0, e.g. {{4: 0.9, {seq_len}: 0.1}}")
    check(abs(sum(block_mix.values()) - 1.0) < 1e-6, f"block_mix probabilities sum to {sum(block_mix.values())}, not 1: fix --block_mix")
    check(isinstance(eval_block_sizes, (list, tuple)) and eval_block_sizes, "--eval_block_sizes must be a list, e.g. [4, 1024]")
    for bs in list(block_mix) + list(eval_block_sizes):
        check(isinstance(bs, int) and 0 < bs <= seq_len and seq_len % bs == 0,
              f"block size {bs} does not divide seq_len={seq_len}: use a divisor of {seq_len} in block_mix/eval_block_sizes")
    check(not noise_search or search_interval % eval_interval == 0, f"--search_interval={search_interval} must be a "
          f"multiple of --eval_interval={eval_interval}: the searched intervals are saved with the evaluation's checkpoint")
    check(isinstance(noise_clip, dict), f"--noise_clip={noise_clip!r} must map block sizes to (eps_min, eps_max)")
    for bs, iv in noise_clip.items():
        check(isinstance(bs, int) and not isinstance(bs, bool) and bs > 0, f"noise_clip has the key {bs!r}: its keys are block sizes, e.g. {{4: (0.5, 1.0)}}")
        check(isinstance(iv, (tuple, list)) and len(iv) == 2 and all(map(number, iv)) and 0 < iv[0] <= iv[1] <= 1,
              f"noise_clip[{bs}]={iv!r} must be an interval (eps_min, eps_max) with 0 < eps_min <= eps_max <= 1")
        add_noise(torch.zeros(1, bs, dtype=torch.long), bs, 1, *iv, resample=resample)  # resampling needs a masked fraction j / bs in it


def check_batch(world):
    """The batch splits into micro-steps of batch_size sequences on each of the world's processes."""
    check(total_batch_size % (batch_size * seq_len * world) == 0, f"total_batch_size={total_batch_size} is not a multiple "
          f"of batch_size*seq_len*world_size={batch_size * seq_len * world}")
    check(not noise_search or search_seqs >= batch_size * world, f"--search_seqs={search_seqs} gives some of the {world} "
          f"processes no batch of {batch_size}: use at least {batch_size * world}")


def check_data():
    """data/<dataset>: present, prepared with the expected tokenizer, longer than a sequence. Returns its meta.json."""
    hint = f"`python prepare_owt.py --input=FILE{' --tokenizer=char' if tokenizer == 'char' else ''} --out_dir={data_dir}`"
    if dataset == 'openwebtext':
        hint = f"`python prepare_owt.py` (OpenWebText), or {hint} for your own text"
    for split in ('train', 'val'):
        check(os.path.exists(os.path.join(data_dir, f'{split}.bin')), f"{data_dir}/{split}.bin not found: run {hint}")
    path = os.path.join(data_dir, 'meta.json')
    try:
        meta = json.load(open(path)) if os.path.exists(path) else {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path} is not valid JSON: prepare the data again with {hint}")
    check(isinstance(meta, dict) and {'tokenizer', 'vocab_size', 'eot'} <= set(meta), f"{path} lacks its tokenizer fields")
    check(meta['tokenizer'] == (tokenizer or meta['tokenizer']), f"{data_dir} holds {meta['tokenizer']} tokens but this config "
          f"expects {tokenizer}: prepare it with {hint}, or pass --tokenizer={meta['tokenizer']}")
    for split in ('val', 'train'):  # val first: the smaller file to scan for documents (doc_start)
        size = os.path.getsize(os.path.join(data_dir, f'{split}.bin'))
        check(size % 2 == 0, f"{data_dir}/{split}.bin has an odd number of bytes, so it is not uint16 tokens: prepare it again with {hint}")
        check(size // 2 > seq_len, f"{data_dir}/{split}.bin has {size // 2} tokens, fewer than one sequence of seq_len={seq_len}: "
              f"use more text or a smaller --seq_len")
        check(not doc_start or len(doc_starts(split, meta['eot'])), f"--doc_start=True but {data_dir}/{split}.bin has no "
              f"<|endoftext|> followed by {seq_len - bos} tokens (no document breaks, as in OpenWebText's val.bin): drop --doc_start")
    return meta


starts = {}  # split -> where its documents begin, found once (doc_start)
def doc_starts(split, eot):
    """Where split's documents begin (the token after each <|endoftext|>) with a whole window's text after them
    (get_batch's k tokens); read in chunks of 64M tokens, so a large file never becomes one boolean array."""
    if split not in starts:
        data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        n, c = len(data) - (seq_len - bos), 1 << 26
        starts[split] = torch.from_numpy(np.concatenate([np.flatnonzero(data[i:min(i + c, n)] == eot) + i + 1 for i in range(0, n, c)]))
    return starts[split]


def check_out():
    """The output folder: a folder, and no trained model in it replaced unless asked (not needed to evaluate)."""
    if eval_only:
        return
    check(not init_from.startswith('run:') or os.path.abspath(source_path()) != os.path.abspath(ckpt_path),
          f"--init_from={init_from} is this run's own out_dir: fine-tune into a new --out_dir (or --init_from=resume)")
    check(not os.path.exists(out_dir) or os.path.isdir(out_dir), f"--out_dir={out_dir} is a file: pick a folder name")
    check(init_from == 'resume' or overwrite or not os.path.exists(ckpt_path),
          f"{ckpt_path} already holds a trained model: continue it with --init_from=resume, pick a new --out_dir, "
          f"or pass --overwrite=True to replace it")


def source_path():
    return init_from[4:] if init_from.endswith('.pt') else os.path.join(init_from[4:], 'ckpt.pt')


def same_shape(args, what):
    """A model keeps its shape: an override of it on this command line that disagrees is a mistake."""
    for k in ('vocab_size', 'n_layer', 'n_head', 'n_embd'):
        check(k not in given or args[k] == globals()[k], f"{what} has {k}={args[k]} but this command line asks for "
              f"{k}={globals()[k]}: drop --{k} (a model keeps its shape), or train a new one in a new --out_dir")


def check_resume(ck):
    """out_dir/ckpt.pt continues exactly: its optimizer state, shape, length, kind and tokens, and iterations left."""
    check('optimizer' in ck or eval_only, f"{ckpt_path} holds no optimizer state, so it cannot be resumed exactly: "
          f"fine-tune from it with --init_from=run:{out_dir} in a new --out_dir, or evaluate it with --eval_only=True")
    same_shape(ck['model_args'], ckpt_path)
    check(ck['model_args']['seq_len'] == seq_len, f"{ckpt_path} trained at seq_len={ck['model_args']['seq_len']}: "
          f"drop --seq_len to resume it, or fine-tune it at another length with --init_from=run:{out_dir} in a new --out_dir")
    check(ck['config'].get('causal', False) == causal, f"{ckpt_path} was trained with causal={ck['config'].get('causal')}")
    check(ck.get('meta', meta) == meta, f"{ckpt_path} was trained on other tokens than {data_dir} (another tokenizer or "
          f"character set): resume on the data it was trained on, or prepare this text into a new dataset and fine-tune")
    check(ck['iter_num'] < max_iters or eval_only, f"{ckpt_path} is at iteration {ck['iter_num']}, already --max_iters="
          f"{max_iters}: nothing to train; raise --max_iters to go on (or evaluate it with --eval_only=True)")


def check_source(src):
    """A fine-tune's source run: the same kind of model, the same tokens, the shape this command line asks for."""
    check(src['config'].get('causal', False) == causal, f"{src_path} was trained with causal={src['config'].get('causal')}")
    check(src.get('meta', meta) == meta, f"{src_path} was trained on other tokens than {data_dir}: fine-tune on data "
          f"prepared with the same tokenizer and vocabulary")
    same_shape(src['model_args'], src_path)


def claim(folder):
    """The output folder: made (and removed again at exit if nothing was saved into it), writable, ours alone."""
    if not os.path.exists(folder):
        atexit.register(lambda: os.path.isdir(folder) and not os.listdir(folder) and os.rmdir(folder))
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f'.write_test_{os.getpid()}')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        fail(f"cannot write to --out_dir={folder} ({e.strerror}): pick a folder you can write to")
    lock(folder)


def lock(folder):
    """One training run per out_dir: a second one, started while the first runs, would write over its checkpoint.
    The lock file holds the owner's host and pid; one whose process is gone (a killed run) is taken over."""
    path, me = os.path.join(folder, 'train.lock'), f"{os.uname().nodename} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, me.encode())
            os.close(fd)
            atexit.register(lambda: open(path).read() == me and os.remove(path))
            return
        except FileExistsError:
            host, _, pid = open(path).read().partition(' ')
            if host != os.uname().nodename or alive(pid):
                fail(f"{folder} is being trained by another run (process {pid} on {host}): wait for it, or pick another "
                     f"--out_dir (if that run is gone, delete {path})")
            print(f"taking over {path}, left by a run that is no longer running (process {pid})")
            os.remove(path)
    fail(f"cannot take the lock {path}: another run keeps taking it; pick another --out_dir")


def alive(pid):
    """Whether process pid (another one than this) is alive here; where /proc exists, whether it is a train.py."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = f'/proc/{pid}/cmdline'
    return not os.path.exists(cmdline) or 'train.py' in open(cmdline).read()


# resume: the checkpoint's config is the default, this command line's config files and --key=value win
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
checkpoint = source = None
if init_from == 'resume':
    checkpoint = guard(load_checkpoint, ckpt_path)
    saved = {'bos': False, 'clean_first': False, 'doc_start': False, **checkpoint['config']}  # checkpoints from before these trained without them
    globals().update({k: v for k, v in saved.items() if k in config_keys and k not in RUN_KEYS})
    globals().update({k: v for k, v in checkpoint['model_args'].items() if k != 'dropout'})  # a fine-tune's shape is its source's
    configure(globals(), sys.argv[1:], quiet=True)
config = {k: globals()[k] for k in config_keys}  # logged and saved in the checkpoint

# every check before any expensive work (and before anything is written), one clear line per mistake
guard(check_config)
ddp = int(os.environ.get('RANK', -1)) != -1  # DDP: on when torchrun sets RANK
world = int(os.environ.get('WORLD_SIZE', 1)) if ddp else 1
guard(check_batch, world)
data_dir = os.path.join('data', dataset)
meta = guard(check_data)
vocab_size = vocab_size or meta['vocab_size'] + 1  # + MASK
guard(check_out)
if init_from == 'resume':
    guard(check_resume, checkpoint)
if init_from.startswith('run:'):
    src_path = source_path()
    source = guard(load_checkpoint, src_path, 'cpu', '--init_from=run:OUT_DIR')  # the run a fine-tune starts from
    guard(check_source, source)

if ddp:
    init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    ddp_rank, ddp_local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
    if device.startswith('cuda'):
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
else:
    ddp_rank = 0
master_process = ddp_rank == 0
grad_accum = total_batch_size // (batch_size * seq_len * world)
if master_process and not eval_only:
    claim(out_dir)

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
device_type = device.split(':')[0]
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = contextlib.nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)

# the poor man's data loader; recreate the memmap every batch to avoid a memory leak (nanoGPT)
def get_batch(split, gen, n):
    data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
    k = seq_len - bos  # with bos: L - 1 tokens of text after the <|endoftext|> at position 0
    if doc_start:
        docs = doc_starts(split, meta['eot'])
        ix = docs[torch.randint(len(docs), (n,), generator=gen)]
    else:
        ix = torch.randint(len(data) - k, (n,), generator=gen)
    x = torch.stack([torch.from_numpy(data[i:i + k].astype(np.int64)) for i in ix])
    return torch.cat([torch.full((n, 1), meta['eot']), x], dim=1) if bos else x

def micro_batch(it, gidx):
    """Data, block size and noise of global micro-batch gidx of iteration it, drawn from a generator seeded by
    (seed, it, gidx): the same for any number of processes, and exactly reproduced after a resume."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + it) * 4099 + gidx)
    x0 = get_batch('train', gen, batch_size)
    if causal:
        return x0, None, None, seq_len
    sizes = list(block_mix)
    bs = sizes[torch.multinomial(torch.tensor([block_mix[b] for b in sizes], dtype=torch.float), 1, generator=gen).item()]
    x_t, t = add_noise(x0, bs, vocab_size - 1, *intervals.get(bs, (1e-3, 1.0)), resample, generator=gen, keep_first=bos or clean_first)
    return x0, x_t, t, bs

def to_device(*xs):
    if device_type == 'cuda':
        return [x.pin_memory().to(device, non_blocking=True) if torch.is_tensor(x) else x for x in xs]
    return [x.to(device) if torch.is_tensor(x) else x for x in xs]

# model, EMA and optimizer: from scratch, from out_dir/ckpt.pt, from another run, or from a BD3-LM checkpoint
model_args = dict(seq_len=seq_len, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
intervals = dict(noise_clip)  # the noise interval of each block size; the search (noise_search) updates it
iter_num, best_val_loss, saved_iter = 0, 1e9, None
log_mode = 'a' if init_from == 'resume' or eval_only else 'w'  # how log_line opens out_dir/log.jsonl the first time
if init_from == 'resume':
    iter_num, best_val_loss, saved_iter = checkpoint['iter_num'], checkpoint.get('best_val_loss', 1e9), checkpoint['iter_num']
    intervals = dict(checkpoint.get('intervals', intervals))  # what its noise search found, if it ran
    old = checkpoint['config'].get('noise_clip', {})
    for b in set(old) | set(noise_clip):  # a noise_clip changed on this command line wins over the checkpoint's
        if tuple(old.get(b, ())) != tuple(noise_clip.get(b, ())):
            intervals.pop(b, None)
            intervals.update({b: tuple(noise_clip[b])} if b in noise_clip else {})
            print(f"noise_clip for B={b}: {noise_clip.get(b, 'unclipped')} (the checkpoint had {old.get(b, 'unclipped')})")
elif init_from.startswith('run:'):
    # the source's shape, at this run's length and dropout (rotary positions are not weights); intervals start
    # from this config's noise_clip, as BD3-LM resets its clipped schedule for a fine-tune
    model_args = {**source['model_args'], 'dropout': dropout, 'seq_len': seq_len}
torch.manual_seed(seed)  # the initial weights (dropout reseeds itself every step, below)
if init_from.startswith('bd3lm:'):  # fine-tune a public BD3-LM checkpoint (its shape wins over the config's)
    model, found = guard(load_bd3lm, init_from.split(':', 1)[1], seq_len, dropout)
    model_args = {k: getattr(model.config, k) for k in model_args}
    guard(same_shape, model_args, init_from)
    if master_process:  # BD3-LM resets the clipped schedule for a fine-tune; its search finds it again
        print(f"loaded {init_from}: {model_args}; its searched noise interval {found or 'none'} is not carried over, "
              f"the intervals start from noise_clip={noise_clip}")
else:
    model = DiD(DiDConfig(**model_args))
guard(check, model_args['vocab_size'] >= meta['vocab_size'] + 1, f"the model has {model_args['vocab_size']} ids but "
      f"{data_dir} uses {meta['vocab_size']} tokens + MASK: prepare the data with the model's tokenizer")
for ck in (checkpoint, source):
    if ck is not None:
        model.load_state_dict(ck['model'])
model.to(device)
model.flex = flex and device_type == 'cuda'
ema_model = copy.deepcopy(model).eval().requires_grad_(False)
for ck in (checkpoint, source):
    if ck is not None:
        ema_model.load_state_dict(ck['ema'])
if master_process:
    print(f"tokens per iteration: {total_batch_size:,} ({world} processes x {grad_accum} micro-steps x {batch_size} x {seq_len})")
    print(f"model: {model.get_num_params() / 1e6:.2f}M parameters, vocab {model_args['vocab_size']} (MASK = {model_args['vocab_size'] - 1})")
    if source is not None:
        print(f"fine-tuning {src_path} (iteration {source['iter_num']}): its weights and EMA, a fresh optimizer, "
              f"noise intervals from noise_clip")

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16' and device_type == 'cuda'))
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(beta1, beta2), eps=1e-8,
                              weight_decay=weight_decay, fused=(device_type == 'cuda'))
if checkpoint is not None and 'optimizer' in checkpoint:
    optimizer.load_state_dict(checkpoint['optimizer'])
    if 'scaler' in checkpoint:
        scaler.load_state_dict(checkpoint['scaler'])  # fp16: the loss scale goes on where it was
checkpoint = source = None  # free memory

raw_model = model
if compile:
    print("compiling the model... (takes a ~minute)")
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None)

def val_batches(split):
    gen = torch.Generator().manual_seed(1234)
    return [get_batch(split, gen, batch_size).to(device) for _ in range(eval_iters)]

def evaluate():
    """Validation (and train) NELBO of the EMA weights at each eval block size, on fixed seeded batches."""
    out = {}
    for split in ('train', 'val'):
        batches = val_batches(split)
        for bs in ([0] if causal else eval_block_sizes):
            out[f'{split}/nelbo_B{bs}'] = nelbo(ema_model, batches, bs, ctx=ctx, bos=bos or clean_first)
    return out

@torch.no_grad()
def search_noise():
    """BD3-LM's var_min search for every small block size, on search_seqs validation sequences (EMA weights), run
    by every process: process r scores batches r, r + world, ... and all-gathers the per-block losses, so every
    process sees the same losses in the same order and picks the same interval (for any number of processes).
    The global block keeps [1e-3, 1]: the refine stage asks it to denoise any masked fraction gamma, and a clipped
    interval (chosen for low variance, not for that) would leave some of them untrained."""
    n = max(1, search_seqs // batch_size)
    mine = [(i, get_batch('val', torch.Generator().manual_seed(4321 + i), batch_size).to(device)) for i in range(ddp_rank, n, world)]
    for bs in [b for b in block_mix if b < seq_len]:
        def block_losses(iv):
            out = []
            for i, x0 in mine:
                g = torch.Generator(device=x0.device).manual_seed(7 + i)
                x_t, t = add_noise(x0, bs, vocab_size - 1, *iv, resample, generator=g, keep_first=bos or clean_first)
                with ctx:
                    nll = diffusion_loss(ema_model, x0, x_t, t, bs, per_token=True)  # (B, L)
                out.append(nll.view(len(x0), -1, bs).mean(-1).float())  # (B, L / bs)
            if not ddp:
                return out
            k = -(-n // world)  # batches per process, the last ones padded
            local = torch.stack(out + [torch.zeros_like(out[0])] * (k - len(out)))  # (k, B, L / bs)
            every = [torch.empty_like(local) for _ in range(world)]
            torch.distributed.all_gather(every, local)
            return [every[i % world][i // world] for i in range(n)]  # batch i came from process i % world
        cands = [iv for iv in search_intervals() if iv == (1e-3, 1.0) or any(iv[0] <= j / bs <= iv[1] for j in range(bs + 1))]
        intervals[bs], scores = clipped_schedule_search(block_losses, cands)
        if master_process:
            print(f"noise search B={bs} on {n * batch_size} sequences: interval {intervals[bs]} (loss variance "
                  f"{scores[intervals[bs]]:.4g}, unclipped {scores[(1e-3, 1.0)]:.4g})")

def get_lr(it):  # linear warmup, then constant (BD3-LM) or a cosine down to a tenth (decay_lr, nanoGPT)
    if it < warmup_iters or not decay_lr:
        return learning_rate * min(1.0, (it + 1) / (warmup_iters + 1))
    progress = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
    return learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

def finite_weights():
    return all(torch.isfinite(p).all() for m in (raw_model, ema_model) for p in m.parameters())

def save_checkpoint():
    global saved_iter
    ckpt = {'model': raw_model.state_dict(), 'ema': ema_model.state_dict(), 'optimizer': optimizer.state_dict(),
            'model_args': model_args, 'config': config, 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'intervals': intervals, 'meta': meta, 'scaler': scaler.state_dict()}  # meta: the tokenizer, so sample.py needs no data folder
    tmp = ckpt_path + '.tmp'
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, ckpt_path)  # atomic: an interrupted save never leaves a broken ckpt.pt
    except BaseException as e:  # a full disk (torch.save raises RuntimeError around the OSError), a second Ctrl-C
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(e, (OSError, RuntimeError)):
            raise
        fail(f"could not save iteration {iter_num} to {ckpt_path} ({str(e).splitlines()[0][:120]}); nothing partial is "
             f"left: {kept()}. Free disk space and resume")
    saved_iter = iter_num

def log_line(**info):
    """Each evaluation and each training log line as one JSON line of out_dir/log.jsonl: what other programs read
    (ablate.py, gpu_check.py, the tests), never the printed lines. A new run (not a resume, not an evaluation)
    starts a new file with its first line: a run refused before then leaves the old one as it was."""
    global log_mode
    if os.path.isdir(out_dir):
        with open(os.path.join(out_dir, 'log.jsonl'), log_mode) as f:
            f.write(json.dumps({'iter': iter_num, **info}) + '\n')
        log_mode = 'a'

def kept():
    return f"{ckpt_path} holds iteration {saved_iter}" if saved_iter is not None else "no checkpoint was written"

peak = peak_flops or peak_flops_of(device)
attn_frac = {bs: attention_fraction(raw_model, bs) for bs in ([0] if causal else block_mix)}

if eval_only:
    if master_process:
        losses = evaluate()
        for k, v in losses.items():
            print(f"{k}: {v:.4f} nats/token, perplexity <= {math.exp(v):.2f}")
        log_line(eval_only=True, eval_iters=eval_iters, **losses)
    if ddp:
        torch.distributed.barrier()  # the others wait for rank 0: a process group torn down early aborts its peers
        destroy_process_group()
    sys.exit(0)

if wandb_log and master_process:
    import wandb
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)

# Ctrl-C (SIGINT) or SIGTERM: finish the iteration, save it, stop; a second one stops at once without saving
stop = []
def on_signal(signum, frame):
    if stop:
        raise KeyboardInterrupt
    stop.append(signum)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)

start_iter = iter_num
if master_process and start_iter:
    print(f"resuming from iteration {start_iter} of {ckpt_path}")
if master_process and warmup_iters > max_iters:  # allowed (a short test run), but said
    print(f"note: --warmup_iters={warmup_iters} is more than --max_iters={max_iters}: the learning rate stays in its "
          f"warmup and ends at {get_lr(max_iters - 1):.2e}, not --learning_rate={learning_rate:.2e}")
t0 = t_start = time.time()
running = {'tokens': 0, 'flops': 0.0, 'dt': 0.0}
stopping = False
try:
    while True:
        # evaluate, search and checkpoint (not at the iteration we resumed from: its evaluation ran before it was saved)
        if (iter_num % eval_interval == 0 or iter_num == max_iters) and iter_num > start_iter:
            if master_process:
                losses = evaluate()
                print(f"step {iter_num}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
                if not all(map(math.isfinite, losses.values())) or not finite_weights():
                    fail(f"the weights diverged by iteration {iter_num} (non-finite NELBO or weights); nothing saved: "
                         f"{kept()}. Try a lower --learning_rate or --dtype=float32")
                best_val_loss = min(best_val_loss, losses[f'val/nelbo_B{0 if causal else eval_block_sizes[0]}'])
                if wandb_log:
                    wandb.log({'iter': iter_num, **losses})
            if noise_search and not causal and iter_num % search_interval == 0:
                search_noise()  # every process, the same result
                if master_process:
                    log_line(intervals={b: list(iv) for b, iv in intervals.items()})
            if master_process:
                save_checkpoint()
                print(f"saved checkpoint to {ckpt_path}")
                log_line(seconds=round(time.time() - t_start, 2), **losses)  # after the save: a logged evaluation is on disk
        if iter_num >= max_iters:
            break
        if stopping:  # after this iteration's evaluation: a resume continues exactly as an uninterrupted run
            if master_process and saved_iter != iter_num and finite_weights():
                save_checkpoint()
            if ddp:
                torch.distributed.barrier()  # the others wait for the save: torchrun would end it when they exit
            fail(f"interrupted: {kept()}; continue with `python train.py --out_dir={out_dir} --init_from=resume`")

        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group['lr'] = lr
        loss_sum, flops = torch.zeros((), device=device), 0.0
        torch.manual_seed(2**62 + (seed * 1_000_003 + iter_num) * 4099 + ddp_rank)  # dropout RNG: a function of the step (resume is exact), apart from the data's
        for micro_step in range(grad_accum):
            x0, x_t, t, bs = micro_batch(iter_num, micro_step * world + ddp_rank)
            head_tokens = batch_size * seq_len if causal else (x_t == vocab_size - 1).sum().item()  # on the CPU: no sync
            flops += estimate_flops(raw_model, batch_size, 0 if causal else bs, head_tokens, attn_frac[0 if causal else bs])
            x0, x_t, t = to_device(x0, x_t, t)
            if ddp:  # sync gradients only on the last micro-step (no_sync() would need a context per branch)
                model.require_backward_grad_sync = (micro_step == grad_accum - 1)
            with ctx:
                loss = model(x0, x_t, t, bs) / grad_accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        stats = torch.stack([loss_sum, torch.tensor(float(bool(stop)), device=device)])
        if ddp:
            torch.distributed.all_reduce(stats)  # SUM (gloo has no AVG); a stop request on any rank stops all
        lossf, stopping = stats[0].item() / world, stats[1].item() > 0
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float('inf'))
        if not math.isfinite(lossf) or (dtype != 'float16' and not torch.isfinite(norm)):  # fp16: the scaler skips the step
            fail(f"loss {lossf}, gradient norm {norm.item()} at iteration {iter_num}; stopping without saving: {kept()}. "
                 f"Try a lower --learning_rate or --dtype=float32")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # EMA with BD3-LM's warmup of the decay
            decay = min(ema_decay, (1 + iter_num) / (10 + iter_num))
            torch._foreach_lerp_(list(ema_model.parameters()), list(raw_model.parameters()), 1 - decay)

        t1 = time.time()
        dt, t0 = t1 - t0, t1
        iter_num += 1
        if iter_num - start_iter > 1:  # the first iteration pays for warm-up and compilation
            running['tokens'] += total_batch_size
            running['flops'] += flops  # this process's FLOPs: MFU is per device
            running['dt'] += dt
        if iter_num % log_interval == 0 and master_process:
            tps = running['tokens'] / max(running['dt'], 1e-9)
            mfu = f", mfu {100 * running['flops'] / running['dt'] / peak:.1f}%" if peak and running['dt'] else ''
            eta = (time.time() - t_start) / (iter_num - start_iter) * (max_iters - iter_num)
            print(f"iter {iter_num}: loss {lossf:.6f}, norm {norm.item():.3f}, lr {lr:.2e}, time {dt * 1000:.0f}ms, "
                  f"{tps:,.0f} tok/s{mfu}, {iter_num}/{max_iters} eta {eta / 60:.1f} min", flush=True)
            log_line(loss=lossf, norm=norm.item(), lr=lr, tok_per_s=tps if running['dt'] else None,
                     mfu=running['flops'] / running['dt'] / peak if peak and running['dt'] else None)
            if wandb_log:
                wandb.log({'iter': iter_num, 'train/loss': lossf, 'grad_norm': norm.item(), 'lr': lr, 'tok_per_s': tps})
            running = {'tokens': 0, 'flops': 0.0, 'dt': 0.0}
except KeyboardInterrupt:
    fail(f"interrupted twice: stopped without saving; {kept()}")

if ddp:
    torch.distributed.barrier()  # the others wait for rank 0's last save: a process group torn down early aborts its peers
    destroy_process_group()
