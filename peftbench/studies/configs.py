"""Model configs without weights, for counting and memory projections (``peftbench memory``,
``peftbench budget --model NAME``): the models the LoRA paper and peft's documentation quote, so
their parameter counts can be checked exactly. Nothing is downloaded; these cannot be trained."""

from __future__ import annotations


def _gpt3_175b():
    from transformers import GPT2Config

    # GPT-3 175B (Brown et al. 2020, Table 2.1): 96 layers, d_model 12288, 96 heads, context 2048,
    # the GPT-2 architecture and byte-level BPE vocabulary (50,257)
    return GPT2Config(n_layer=96, n_embd=12288, n_head=96, n_positions=2048, vocab_size=50257)


def _gpt2_medium():
    from transformers import GPT2Config

    return GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257)


def _bloom_3b():
    from transformers import BloomConfig

    return BloomConfig(hidden_size=2560, n_layer=30, n_head=32, vocab_size=250880)


def _bert_base_uncased():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


CONFIGS = {"gpt3-175b": _gpt3_175b, "gpt2-medium": _gpt2_medium, "bloom-3b": _bloom_3b,
           "bert-base-uncased": _bert_base_uncased}


def config(name: str, num_labels: int = 2):
    cfg = CONFIGS[name]()
    cfg.num_labels = num_labels
    if getattr(cfg, "pad_token_id", None) is None:  # sequence classification needs one to find the last token
        cfg.pad_token_id = getattr(cfg, "eos_token_id", 0) or 0
    cfg.name_or_path = name
    return cfg
