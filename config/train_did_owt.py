# DiD on OpenWebText at the paper's shape: BD3-LM "small" (12 x 768, 12 heads), L = 1024,
# mix-scale training with block 4 (p = 0.9) and the whole sequence (p = 0.1), 512 x 1024 tokens per step.
# $ python prepare_owt.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_did_owt.py

out_dir = 'out-did-owt'
dataset = 'openwebtext'
tokenizer = 'gpt2'
bos = False                          # BD3-LM's OWT scripts: plain 1024-token windows of the EOS-separated stream,
clean_first = True                   # whose first token is kept unmasked and unscored (ignore_bos)
seq_len = 1024
n_layer = 12
n_head = 12
n_embd = 768
batch_size = 16                      # per GPU: the 2L input doubles activation memory (BD3-LM used 16)
total_batch_size = 512 * 1024        # BD3-LM's global batch: 512 sequences
block_mix = {4: 0.9, 1024: 0.1}      # DiD's mix-scale training, lambda = 0.1
noise_clip = {4: (0.5, 1.0)}         # clipped schedule for small blocks until the first search; the global block [1e-3, 1]
noise_search = True                  # BD3-LM's clipped-schedule search (36 intervals per small block size) ...
search_interval = 10000              # ... every 10K steps, with its validation
search_seqs = 12800                  # ... on 100 batches x 16 x 8 GPUs of validation sequences
eval_block_sizes = [4, 1024]
learning_rate = 3e-4
warmup_iters = 2500
max_iters = 39000                    # 26% of BD3-LM's 150K fine-tuning steps (the paper's budget), from scratch here
eval_interval = 1000
eval_iters = 20
ema_decay = 0.9999
