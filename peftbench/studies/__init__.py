"""The LoRA paper's questions as commands: what training and checkpoints cost at any scale
(``memory``), and built-in model configs without weights to ask it for (``configs``)."""
