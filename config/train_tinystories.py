# the quick start: a small DiD on TinyStories as GPT-2 tokens (compact vocabulary), 18-30 minutes on a 2-core CPU
# $ python prepare_owt.py --dataset=tinystories-valid --compact --out_dir=data/tinystories
# $ python train.py config/train_tinystories.py
# $ python sample.py --out_dir=out-tinystories --num_samples=3 --show

out_dir = 'out-tinystories'
dataset = 'tinystories'
tokenizer = 'gpt2'
eval_interval = 500
log_interval = 50
eval_iters = 16
seq_len = 256                   # a story, or most of one: the global block sees all of it
n_layer = 4
n_head = 4
n_embd = 128                    # narrow: at 18 CPU minutes 4 x 128 learns more than 4 x 192 or 4 x 256 (docs/log.md)
batch_size = 8
total_batch_size = 8 * 256      # one micro-step per iteration
block_mix = {4: 0.9, 256: 0.1}  # mix-scale (paper, Sec. 3.3): drafting blocks of 4, sometimes the whole story
noise_clip = {4: (0.5, 1.0)}
eval_block_sizes = [4, 256]
learning_rate = 2e-3            # a small model trained briefly tolerates a high lr
beta2 = 0.95                    # nanoGPT's; BD3-LM's 0.999 can sit longer on an early plateau (over two seeds at 4 x 256: a tie, docs/log.md)
warmup_iters = 100
decay_lr = True                 # cosine to lr / 10
max_iters = 2200                # 18 minutes at 0.49 s per iteration on 2 cores (slower on slower days)
ema_decay = 0.999
device = 'cpu'
compile = False
