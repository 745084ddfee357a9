"""
Loading: train.py's checkpoints, BD3-LM's public ones (kuleshov-group/bd3lm-owt-*, folded into our model), and the
tokenizer a checkpoint was trained with.
"""

import json
import os
import re

import torch
from torch.nn import functional as F

from did import DiD, DiDConfig


def load_checkpoint(path, device='cpu', flag='--out_dir'):
    """train.py's ckpt.pt, or ValueError with one line saying what is wrong with the file (flag: the setting that named it)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: train first (python train.py ...) or point {flag} at a run")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated "
                         f"or from another program: retrain, or restore it from a copy")
    need = {'model', 'ema', 'model_args', 'config', 'iter_num'}
    if not isinstance(ckpt, dict) or not need <= set(ckpt):
        raise ValueError(f"{path} is not a train.py checkpoint (it lacks {sorted(need - set(ckpt) if isinstance(ckpt, dict) else need)})")
    if 'meta' not in ckpt:  # checkpoints from before meta: GPT-2's vocabulary, or no way to read their ids
        if ckpt['model_args']['vocab_size'] != 50258:
            raise ValueError(f"{path} has no tokenizer (meta) and {ckpt['model_args']['vocab_size'] - 1} token ids, not GPT-2's "
                             f"50257: its ids cannot be read; add the meta.json of the data it was trained on to it, as "
                             f"ckpt['meta'] = json.load(open('data/NAME/meta.json')), and torch.save it")
        ckpt['meta'] = {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}
    return ckpt


def ema_model(ckpt, device='cpu'):
    """The model of a train.py checkpoint with its EMA weights (what sampling and judging use, as BD3-LM), in eval mode."""
    model = DiD(DiDConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['ema'])
    return model.to(device).eval()


@torch.no_grad()
def from_bd3lm(sd, seq_len=1024, dropout=0.0, n_head=None):
    """Build a DiD from a BD3-LM / MDLM DiT state dict (keys 'backbone.*' as in its HF model, or without prefix).

    BD3-LM keeps DiT's adaLN but feeds it time 0 (time_conditioning=False), so c = silu(sigma_map(0)) is a
    constant and every shift, scale and gate is a constant vector. Fold them away:
      modulate(LN_w(x), shift, scale) = LN(x) * w * (1 + scale) + shift  -> a LayerNorm with weight and bias
      x + gate * (W y + b)                                              -> our residual gates gate_1, gate_2
    n_head: the checkpoint config's n_heads (the state dict does not say; None: head dim 64, as small/medium).
    Returns the model and the checkpoint's clipped noise interval (sampling_eps_min, sampling_eps_max), read
    from its float32 buffers and rounded to 6 decimals (0.0010000000474974513 is the unclipped 1e-3)."""
    sd = {k.removeprefix('backbone.'): v.double() for k, v in sd.items()}  # fold in float64, store in fp32
    V, C = sd['vocab_embed.embedding'].shape
    n_layer = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    n_head = n_head or C // 64
    model = DiD(DiDConfig(seq_len=seq_len, vocab_size=V, n_layer=n_layer, n_head=n_head, n_embd=C, dropout=dropout))
    # the constant conditioning vector: sinusoidal embedding of t = 0 is [cos 0 ..., sin 0 ...] = [1..., 0...]
    w0 = sd['sigma_map.mlp.0.weight']
    emb = torch.cat([torch.ones(w0.shape[1] // 2), torch.zeros(w0.shape[1] - w0.shape[1] // 2)]).double()
    c = F.silu(F.linear(F.silu(F.linear(emb, w0, sd['sigma_map.mlp.0.bias'])),
                        sd['sigma_map.mlp.2.weight'], sd['sigma_map.mlp.2.bias']))
    model.wte.weight[:V] = sd['vocab_embed.embedding']
    for i, block in enumerate(model.h):
        p = f'blocks.{i}.'
        mod = F.linear(c, sd[p + 'adaLN_modulation.weight'], sd[p + 'adaLN_modulation.bias'])
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6)
        block.ln_1.weight.copy_(sd[p + 'norm1.weight'] * (1 + scale1))
        block.ln_1.bias.copy_(shift1)
        block.attn.c_attn.weight.copy_(sd[p + 'attn_qkv.weight'])
        block.attn.c_proj.weight.copy_(sd[p + 'attn_out.weight'])
        block.gate_1.copy_(gate1)
        block.ln_2.weight.copy_(sd[p + 'norm2.weight'] * (1 + scale2))
        block.ln_2.bias.copy_(shift2)
        block.mlp.c_fc.weight.copy_(sd[p + 'mlp.0.weight'])
        block.mlp.c_fc.bias.copy_(sd[p + 'mlp.0.bias'])
        block.mlp.c_proj.weight.copy_(sd[p + 'mlp.2.weight'])
        block.mlp.c_proj.bias.copy_(sd[p + 'mlp.2.bias'])
        block.gate_2.copy_(gate2)
    shift, scale = F.linear(c, sd['output_layer.adaLN_modulation.weight'], sd['output_layer.adaLN_modulation.bias']).chunk(2)
    model.ln_f.weight.copy_(sd['output_layer.norm_final.weight'] * (1 + scale))
    model.ln_f.bias.copy_(shift)
    model.lm_head.weight.zero_()
    model.lm_head.bias.zero_()
    model.lm_head.weight[:V] = sd['output_layer.linear.weight']
    model.lm_head.bias[:V] = sd['output_layer.linear.bias']
    eps = tuple(round(float(sd.get(k, torch.tensor(d))), 6) for k, d in (('sampling_eps_min', 1e-3), ('sampling_eps_max', 1.0)))
    return model, eps


def load_bd3lm(name, seq_len=1024, dropout=0.0):
    """name: a Hugging Face repo id (kuleshov-group/bd3lm-owt-block_size4, ...) or a local directory holding
    its model.safetensors or pytorch_model.bin, and its config.json (n_heads, block_size; mask_index for a
    vocabulary other than GPT-2's + MASK). Downloading needs
    the optional huggingface_hub package. Returns the model and {block_size: noise interval}: the interval
    the checkpoint's training searched, for the one block size it was searched for (empty when unclipped or
    when config.json does not say the block size)."""
    path = name
    if not os.path.isdir(name):
        if not re.fullmatch(r'[\w.-]+/[\w.-]+', name) or name.startswith('.'):  # not owner/name: a local folder
            raise ValueError(f"bd3lm:{name} is not a folder here, nor a Hugging Face repo id (owner/name)")
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise ValueError(f"downloading {name} needs huggingface_hub: pip install huggingface_hub "
                             f"(or download the repo yourself and pass its local directory)")
        try:
            path = snapshot_download(name, allow_patterns=['*.safetensors', '*.bin', '*.json'])
        except Exception as e:  # offline, no such repo, no access: one line, not three chained tracebacks
            raise ValueError(f"cannot download {name} ({type(e).__name__}: {str(e).splitlines()[0][:120]}): check the "
                             f"repo id and the network, or download it yourself and pass bd3lm:LOCAL_FOLDER")
    if os.path.exists(os.path.join(path, 'model.safetensors')):
        from safetensors.torch import load_file
        sd = load_file(os.path.join(path, 'model.safetensors'))
    elif os.path.exists(os.path.join(path, 'pytorch_model.bin')):
        sd = torch.load(os.path.join(path, 'pytorch_model.bin'), map_location='cpu', weights_only=True)
    else:
        raise ValueError(f"no model.safetensors or pytorch_model.bin in {path}")
    cfg_path = os.path.join(path, 'config.json')
    cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    V = next(v.shape[0] for k, v in sd.items() if k.endswith('vocab_embed.embedding'))
    if cfg.get('mask_index', V - 1 if V == 50258 else None) != V - 1:  # BD3-LM appends MASK only to GPT-2's vocabulary
        raise ValueError(f"{name} has a vocabulary of {V} ids with MASK at {cfg.get('mask_index', 'an unknown id')}: "
                         f"this model keeps MASK at the last id, as BD3-LM's GPT-2 (OpenWebText) checkpoints do (50258 "
                         f"ids); an LM1B checkpoint's BERT vocabulary has [MASK] at 103 and cannot be loaded")
    model, eps = from_bd3lm(sd, seq_len, dropout, cfg.get('n_heads'))
    block = cfg.get('block_size')
    return model, ({block: eps} if block and eps != (1e-3, 1.0) else {})


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, or ValueError with the fix when its files cannot be fetched (no network)."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        raise ValueError(f"tiktoken cannot load the GPT-2 BPE files ({type(e).__name__}; no network?): set "
                         f"TIKTOKEN_CACHE_DIR to a folder holding a copy of tiktoken's cache (copied from a machine "
                         f"with a network), or use characters (prepare_owt.py --tokenizer=char)")


class Tokenizer:
    """GPT-2 BPE (tiktoken) or characters, as written by prepare_owt.py into meta.json. eot is the document
    separator <|endoftext|> (50256 for GPT-2), also the default one-token prompt. A compact GPT-2 vocabulary
    (prepare_owt.py --compact) keeps only the ids its text uses: meta['ids'][i] is the GPT-2 id of our id i, so
    text decodes exactly as GPT-2's would, and a model has no rows for ids its data never had."""

    def __init__(self, meta):
        self.kind, self.eot, self.vocab_size = meta['tokenizer'], meta['eot'], meta['vocab_size']
        self.ids = meta.get('ids')  # compact GPT-2: our id -> GPT-2 id
        if self.kind == 'gpt2':
            self.enc = gpt2_encoding()
            if self.ids is not None:
                self.ours = {g: i for i, g in enumerate(self.ids)}
        else:
            self.chars = meta['chars']
            self.stoi = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text, strict=True):
        """Plain text -> ids; a literal "<|endoftext|>" in the text becomes the eot token. A token the vocabulary
        lacks is a ValueError naming it; with strict=False (the judge re-encoding samples) it is spelled with the
        single-byte tokens instead, and left out where even those are missing."""
        pieces = [self._encode(p, strict) for p in text.split('<|endoftext|>')]
        return sum((([self.eot] if i else []) + p for i, p in enumerate(pieces)), [])

    def _encode(self, text, strict):
        if self.kind != 'gpt2':
            for c in text:
                if c not in self.stoi:
                    raise ValueError(f"the character {c!r} is not in this model's vocabulary (its training text never had it)")
            return [self.stoi[c] for c in text]
        ids = self.enc.encode_ordinary(text)
        if self.ids is None:
            return ids
        out = []
        for g in ids:
            if g in self.ours:
                out.append(self.ours[g])
            elif strict:
                raise ValueError(f"the word {self.enc.decode([g])!r} (GPT-2 token {g}) is not in this model's vocabulary "
                                 f"(its training text never used it): rephrase without it")
            else:
                single = (self.enc.encode_single_token(bytes([b])) for b in self.enc.decode_single_token_bytes(g))
                out += [self.ours[b] for b in single if b in self.ours]
        return out

    def unknown(self, text):
        """How many GPT-2 tokens of text a compact vocabulary lacks (encode(strict=False) spells them in bytes or
        leaves them out): 0 for the full vocabulary and for characters (a character judge must share the set)."""
        if self.ids is None:
            return 0
        return sum(g not in self.ours for p in text.split('<|endoftext|>') for g in self.enc.encode_ordinary(p))

    def decode(self, ids):
        if self.kind == 'gpt2':
            return self.enc.decode([self.ids[i] for i in ids] if self.ids is not None else list(ids))
        return ''.join(self.chars[i] if i < len(self.chars) else '<|endoftext|>' for i in ids)
