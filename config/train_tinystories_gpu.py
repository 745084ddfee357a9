# the quick start's recipe at nanoGPT's size on one GPU: all of TinyStories as compact GPT-2 tokens, GPT-2 small's shape
# (not yet run on a GPU: gpu_check.py times it on synthetic tokens; no loss or sample from it is reported anywhere)
# $ python prepare_owt.py --dataset=tinystories --compact --out_dir=data/tinystories_all   # 1.9 GB download
# $ python train.py config/train_tinystories_gpu.py
# $ python sample.py --out_dir=out-tinystories-gpu --num_samples=3 --show

out_dir = 'out-tinystories-gpu'
dataset = 'tinystories_all'
tokenizer = 'gpt2'
eval_interval = 1000
log_interval = 50
eval_iters = 50
seq_len = 256                   # a story: the global block sees all of it
n_layer = 12
n_head = 12
n_embd = 768                    # GPT-2 small's trunk (85M parameters) with a ~16M compact embedding and head
batch_size = 64
total_batch_size = 64 * 256 * 2  # 32K tokens per step, two micro-steps
block_mix = {4: 0.9, 256: 0.1}  # mix-scale (paper, Sec. 3.3)
noise_clip = {4: (0.5, 1.0)}
eval_block_sizes = [4, 256]
dropout = 0.0
learning_rate = 6e-4            # nanoGPT's GPT-2 small rate
beta2 = 0.95                    # nanoGPT's, as the quick start's
warmup_iters = 500
decay_lr = True                 # cosine to lr / 10
max_iters = 15000               # ~490M tokens: about one epoch of TinyStories' training split
ema_decay = 0.9999
