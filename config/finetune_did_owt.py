# The paper's recipe: fine-tune BD3-LM's public 850K-step pretrain (MDLM, block 1024) with mix-scale training
# for 26% of BD3-LM's fine-tuning budget (150K steps at batch 512 -> 39K steps), BD3-LM's optimizer settings.
# $ python prepare_owt.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/finetune_did_owt.py
# Then (the paper's sampler and Gen PPL protocol, BD3-LM's entropy rejection on):
# $ python sample.py --out_dir=out-did-owt-ft --num_samples=300 --batch_size=32 --nucleus=bd3lm --order=random --stages=4:1.0,1024:0.25 --min_entropy=4 --eval --judge=gpt2-large

out_dir = 'out-did-owt-ft'
init_from = 'bd3lm:kuleshov-group/bd3lm-owt-block_size1024-pretrain'  # needs huggingface_hub (+ safetensors)
dataset = 'openwebtext'
tokenizer = 'gpt2'
bos = False                          # BD3-LM's OWT scripts: plain windows, the first token kept clean (ignore_bos)
clean_first = True
seq_len = 1024
dropout = 0.1                        # BD3-LM's model.dropout (residual branches only, as BD3-LM)
batch_size = 16                      # per GPU (BD3-LM: 16 per GPU x 8 GPUs x 4 accumulation = 512)
total_batch_size = 512 * 1024
block_mix = {4: 0.9, 1024: 0.1}      # DiD's mix-scale training, lambda = 0.1
noise_clip = {4: (0.5, 1.0)}         # the starting interval of block 4 (BD3-LM resets it for a fine-tune); the search replaces it
noise_search = True                  # BD3-LM's clipped-schedule search: every 10K steps, 36 intervals per small block size,
search_interval = 10000              # on 12,800 validation sequences (100 batches x 16 x 8 GPUs)
search_seqs = 12800
eval_block_sizes = [4, 1024]
learning_rate = 3e-4                 # AdamW (0.9, 0.999), no weight decay, constant after warmup (BD3-LM)
warmup_iters = 2500
max_iters = 39000                    # 0.26 x 150K
eval_interval = 1000
eval_iters = 20
ema_decay = 0.9999
