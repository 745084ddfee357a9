"""
Train a Diffusion-in-Diffusion model (mix-scale block diffusion), or the AR baseline with causal=True.

On one GPU, or on the CPU (the device is picked automatically):
$ python train.py config/train_did_owt.py
$ python train.py config/train_shakespeare_char.py            # minutes on a laptop CPU
On 8 GPUs of one node with DDP:
$ torchrun --standalone --nproc_per_node=8 train.py config/train_did_owt.py
Resume exactly where a run stopped, or only evaluate its checkpoint at any block size:
$ python train.py config/train_did_owt.py --init_from=resume
$ python train.py config/train_did_owt.py --init_from=resume --eval_only=True --eval_block_sizes="[4, 16, 1024]"
"""

import contextlib
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from did import DiD, DiDConfig, add_noise, configure, load_bd3lm, nelbo

# -----------------------------------------------------------------------------
# default config values: the paper's OWT shape (BD3-LM small, L=1024, mix-scale 4/1024)
# I/O
out_dir = 'out'                 # checkpoints go to out_dir/ckpt.pt
eval_interval = 1000            # evaluate and checkpoint every this many iterations
log_interval = 10               # print training stats every this many iterations
eval_iters = 20                 # fixed, seeded batches per split for the NELBO estimate
eval_only = False               # evaluate the checkpoint (init_from='resume') and exit
init_from = 'scratch'           # 'scratch', 'resume' (out_dir/ckpt.pt) or 'bd3lm:kuleshov-group/bd3lm-owt-block_size4' (or a local dir)
wandb_log = False               # log to Weights & Biases (optional package)
wandb_project = 'did'
wandb_run_name = 'did'
# data
dataset = 'openwebtext'         # reads data/<dataset>/train.bin and val.bin (uint16), written by prepare_owt.py
total_batch_size = 512 * 1024   # tokens per optimizer step; gradient accumulation is derived from it
batch_size = 16                 # sequences per micro-step per process
# model
seq_len = 1024                  # L
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
vocab_size = None               # None: data/<dataset>/meta.json's vocab size + 1 (MASK), else GPT-2's 50258
# diffusion
causal = False                  # True: train a causal next-token model (AR baseline, or a Gen PPL judge)
block_mix = {4: 0.9, 1024: 0.1}  # mix-scale training (paper §2.5): block size -> probability, one draw per micro-step
noise_clip = {4: (0.5, 1.0)}    # clipped t interval per block size (BD3-LM's schedule for B=4); others: (1e-3, 1)
resample = True                 # redraw blocks whose realized masked fraction leaves the clipped interval
eval_block_sizes = [4, 1024]    # report the validation NELBO at these block sizes (0 = AR loss)
# optimizer (BD3-LM: AdamW lr 3e-4, betas (0.9, 0.999), no weight decay, warmup then constant)
learning_rate = 3e-4            # peak learning rate
max_iters = 40000               # total optimizer steps
warmup_iters = 2500             # linear warmup, then constant
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
seed = 1337
# -----------------------------------------------------------------------------
config_keys = configure(globals(), sys.argv[1:])  # apply config/*.py files, then --key=value overrides
config = {k: globals()[k] for k in config_keys}  # logged and saved in the checkpoint
# -----------------------------------------------------------------------------

def fail(msg):
    sys.exit(f"error: {msg}")

# DDP: on when torchrun sets RANK
ddp = int(os.environ.get('RANK', -1)) != -1
if ddp:
    init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    ddp_rank, ddp_local_rank, world = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
else:
    ddp_rank, world = 0, 1
master_process = ddp_rank == 0

# check the config once, with one clear line per mistake
data_dir = os.path.join('data', dataset)
for split in ('train', 'val'):
    if not os.path.exists(os.path.join(data_dir, f'{split}.bin')):
        fail(f"{data_dir}/{split}.bin not found: run `python prepare_owt.py` for OpenWebText, or "
             f"`python prepare_owt.py --input=FILE --out_dir={data_dir}` for your own text")
if not causal:
    if abs(sum(block_mix.values()) - 1.0) > 1e-6:
        fail(f"block_mix probabilities sum to {sum(block_mix.values())}, not 1: fix --block_mix")
    for bs in list(block_mix) + [b for b in eval_block_sizes if b]:
        if bs <= 0 or seq_len % bs:
            fail(f"block size {bs} does not divide seq_len={seq_len}: use a divisor of {seq_len} in block_mix/eval_block_sizes")
tokens_per_micro = batch_size * seq_len * world
if total_batch_size % tokens_per_micro:
    fail(f"total_batch_size={total_batch_size} is not a multiple of batch_size*seq_len*world_size={tokens_per_micro}")
grad_accum = total_batch_size // tokens_per_micro
if master_process:
    print(f"tokens per iteration: {total_batch_size:,} ({world} processes x {grad_accum} micro-steps x {batch_size} x {seq_len})")
    os.makedirs(out_dir, exist_ok=True)

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
device_type = 'cuda' if 'cuda' in device else 'cpu'
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = contextlib.nullcontext() if device_type == 'cpu' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)

# the poor man's data loader; recreate the memmap every batch to avoid a memory leak (nanoGPT)
meta_path = os.path.join(data_dir, 'meta.json')
meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}
if vocab_size is None:
    vocab_size = meta['vocab_size'] + 1  # + MASK

def get_batch(split, gen, n):
    data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
    ix = torch.randint(len(data) - seq_len, (n,), generator=gen)
    return torch.stack([torch.from_numpy(data[i:i + seq_len].astype(np.int64)) for i in ix])

def micro_batch(it, gidx):
    """Data, block size and noise of global micro-batch gidx of iteration it, drawn from a generator seeded by
    (seed, it, gidx): the same for any number of processes, and exactly reproduced after a resume."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + it) * 4099 + gidx)
    x0 = get_batch('train', gen, batch_size)
    if causal:
        return x0, None, None, seq_len
    sizes = list(block_mix)
    bs = sizes[torch.multinomial(torch.tensor([block_mix[b] for b in sizes], dtype=torch.float), 1, generator=gen).item()]
    eps_min, eps_max = noise_clip.get(bs, (1e-3, 1.0))
    x_t, t = add_noise(x0, bs, vocab_size - 1, eps_min, eps_max, resample, generator=gen)
    return x0, x_t, t, bs

def to_device(*xs):
    if device_type == 'cuda':
        return [x.pin_memory().to(device, non_blocking=True) if torch.is_tensor(x) else x for x in xs]
    return [x.to(device) if torch.is_tensor(x) else x for x in xs]

# model, EMA and optimizer: from scratch or from out_dir/ckpt.pt
model_args = dict(seq_len=seq_len, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
iter_num, best_val_loss = 0, 1e9
checkpoint = None
if init_from == 'resume':
    if not os.path.exists(ckpt_path):
        fail(f"--init_from=resume but {ckpt_path} does not exist: train first, or point --out_dir at the run")
    checkpoint = torch.load(ckpt_path, map_location=device, weights_only=False)
    for k, v in model_args.items():
        if k != 'dropout' and checkpoint['model_args'][k] != v:
            fail(f"{ckpt_path} has {k}={checkpoint['model_args'][k]} but this run asks for {k}={v}: "
                 f"use the checkpoint's config, or a new --out_dir")
    if checkpoint['config'].get('causal', False) != causal:
        fail(f"{ckpt_path} was trained with causal={checkpoint['config'].get('causal')}: pass --causal={checkpoint['config'].get('causal')}")
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
elif init_from != 'scratch' and not init_from.startswith('bd3lm:'):
    fail(f"unknown --init_from={init_from!r}: use 'scratch', 'resume' or 'bd3lm:REPO_OR_DIR'")
torch.manual_seed(seed)  # the initial weights (dropout reseeds itself every step, below)
if init_from.startswith('bd3lm:'):  # fine-tune a public BD3-LM checkpoint (its shape wins over the config's)
    model, eps = load_bd3lm(init_from.split(':', 1)[1], seq_len, dropout)
    model_args = {k: getattr(model.config, k) for k in model_args}
    small = min(block_mix)
    if eps != (1e-3, 1.0) and small < seq_len and small not in noise_clip:
        noise_clip[small] = eps  # carry over the checkpoint's clipped noise interval for the small block
    if master_process:
        print(f"loaded {init_from}: {model_args}, noise interval {eps}")
else:
    model = DiD(DiDConfig(**model_args))
if model_args['vocab_size'] < meta['vocab_size'] + 1:
    fail(f"the model has {model_args['vocab_size']} ids but data/{dataset} uses {meta['vocab_size']} tokens + MASK: "
         f"prepare the data with the model's tokenizer, or set --vocab_size={meta['vocab_size'] + 1}")
if checkpoint is not None:
    model.load_state_dict(checkpoint['model'])
model.to(device)
model.flex = flex and device_type == 'cuda'
ema_model = copy.deepcopy(model).eval().requires_grad_(False)
if checkpoint is not None:
    ema_model.load_state_dict(checkpoint['ema'])
if master_process:
    print(f"model: {model.get_num_params() / 1e6:.2f}M parameters, vocab {vocab_size} (MASK = {vocab_size - 1})")

scaler = torch.amp.GradScaler(enabled=(dtype == 'float16'))
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(beta1, beta2), eps=1e-8,
                              weight_decay=weight_decay, fused=(device_type == 'cuda'))
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
checkpoint = None  # free memory

raw_model = model
if compile:
    print("compiling the model... (takes a ~minute)")
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None)

def evaluate():
    """Validation (and train) NELBO of the EMA weights at each eval block size, on fixed seeded batches."""
    out = {}
    for split in ('train', 'val'):
        gen = torch.Generator().manual_seed(1234)
        batches = [get_batch(split, gen, batch_size).to(device) for _ in range(eval_iters)]
        for bs in ([0] if causal else eval_block_sizes):
            out[f'{split}/nelbo_B{bs}'] = nelbo(ema_model, batches, bs, ctx=ctx)
    return out

def get_lr(it):  # linear warmup, then constant (BD3-LM)
    return learning_rate * min(1.0, (it + 1) / (warmup_iters + 1))

def save_checkpoint():
    ckpt = {'model': raw_model.state_dict(), 'ema': ema_model.state_dict(), 'optimizer': optimizer.state_dict(),
            'model_args': model_args, 'config': config, 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'meta': meta}  # the tokenizer, so sample.py needs no data folder
    tmp = ckpt_path + '.tmp'
    torch.save(ckpt, tmp)
    os.replace(tmp, ckpt_path)  # atomic: an interrupted save never leaves a broken ckpt.pt

PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L40S': 362e12, 'A10G': 125e12, '4090': 165e12}  # bf16 dense
peak = next((v for k, v in PEAK_FLOPS.items() if device_type == 'cuda' and k in torch.cuda.get_device_name()), None)

if eval_only:
    if master_process:
        for k, v in evaluate().items():
            print(f"{k}: {v:.4f} nats/token, perplexity <= {math.exp(v):.2f}")
    if ddp:
        destroy_process_group()
    sys.exit(0)

if wandb_log and master_process:
    try:
        import wandb
    except ImportError:
        fail("wandb_log=True needs the wandb package: pip install wandb, or drop --wandb_log")
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)

start_iter = iter_num
t0 = time.time()
running = {'tokens': 0, 'flops': 0.0, 'dt': 0.0}
while True:
    # evaluate and checkpoint (not at the iteration we just resumed from: it was saved already)
    if (iter_num % eval_interval == 0 or iter_num == max_iters) and iter_num > start_iter and master_process:
        losses = evaluate()
        print(f"step {iter_num}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        key = f'val/nelbo_B{0 if causal else eval_block_sizes[0]}'
        best_val_loss = min(best_val_loss, losses[key])
        if wandb_log:
            wandb.log({'iter': iter_num, **losses})
        save_checkpoint()
        print(f"saved checkpoint to {ckpt_path}")
    if iter_num >= max_iters:
        break

    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    loss_sum, flops = torch.zeros((), device=device), 0.0
    torch.manual_seed((seed * 1_000_003 + iter_num) * 4099 + ddp_rank)  # dropout RNG, a function of the step: resume is exact
    for micro_step in range(grad_accum):
        x0, x_t, t, bs = micro_batch(iter_num, micro_step * world + ddp_rank)
        head_tokens = batch_size * seq_len if causal else (x_t == vocab_size - 1).sum().item()  # on the CPU: no sync
        flops += raw_model.estimate_flops(batch_size, 0 if causal else bs, head_tokens)
        x0, x_t, t = to_device(x0, x_t, t)
        if ddp:  # sync gradients only on the last micro-step (no_sync() would need a context per branch)
            model.require_backward_grad_sync = (micro_step == grad_accum - 1)
        with ctx:
            loss = model(x0, x_t, t, bs) / grad_accum
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if ddp:
        torch.distributed.all_reduce(loss_sum)  # SUM (gloo has no AVG)
    lossf = loss_sum.item() / world
    if not math.isfinite(lossf):
        fail(f"loss is {lossf} at iteration {iter_num}; stopping without touching {ckpt_path} (the last good checkpoint). "
             f"Try a lower --learning_rate or --dtype=float32")
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float('inf'))
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
        running['flops'] += flops * world
        running['dt'] += dt
    if iter_num % log_interval == 0 and master_process:
        tps = running['tokens'] / max(running['dt'], 1e-9)
        mfu = f", mfu {100 * running['flops'] / running['dt'] / peak:.1f}%" if peak and running['dt'] else ''
        print(f"iter {iter_num}: loss {lossf:.6f}, norm {norm.item():.3f}, lr {lr:.2e}, time {dt * 1000:.0f}ms, "
              f"{tps:,.0f} tok/s{mfu}")
        if wandb_log:
            wandb.log({'iter': iter_num, 'train/loss': lossf, 'grad_norm': norm.item(), 'lr': lr, 'tok_per_s': tps})
        running = {'tokens': 0, 'flops': 0.0, 'dt': 0.0}

if ddp:
    destroy_process_group()
