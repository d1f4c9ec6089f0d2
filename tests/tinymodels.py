"""Tiny real models built from a config, with a tokenizer trained on the test's own text."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Shanghai Triad", "Twelve Monkeys",
    "Babe", "Dead Man Walking", "Richard III", "Seven", "The Usual Suspects", "Mighty Aphrodite",
    "a very long title that keeps going and going well past the token limit of the encoder in use",
    "Misérables, Les", "Cité des enfants perdus, La", "北京", "space odyssey", "star wars", "return of the jedi",
]


def train_tokenizer(texts=CORPUS, vocab_size: int = 200, bos: bool = False):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) * 3, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def build(kind: str, folder: Path, *, layers: int = 3, hidden: int = 32, seed: int = 0, **config) -> Path:
    """Save a randomly initialised tiny model of family ``kind`` with its tokenizer to ``folder``.

    ``config``: settings that override the family's tiny defaults (e.g. OPT-350m's ``word_embed_proj_dim``).
    """
    import torch
    from transformers import AutoModel, BertConfig, Gemma3TextConfig, GPT2Config, LlamaConfig, OPTConfig

    torch.manual_seed(seed)
    tok = train_tokenizer(bos=kind in ("llama", "opt"))
    v = len(tok)
    common = dict(vocab_size=v, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if kind == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **common)
    elif kind == "opt":
        cfg = OPTConfig(hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                        max_position_embeddings=128, **{"word_embed_proj_dim": hidden, **common, **config})
    elif kind == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=128, **common, **config)
    elif kind == "bert":
        cfg = BertConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=128, vocab_size=v, pad_token_id=0)
    elif kind == "gemma3":
        cfg = Gemma3TextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                               sliding_window=4, **common)
    else:
        raise ValueError(kind)
    model = AutoModel.from_config(cfg)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
