"""``GPTConfig``: the hyperparameters of a GPT, named as in the book."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class GPTConfig:
    """Architecture of a GPT model.

    vocab_size      number of token ids (50257 for GPT-2's BPE)
    context_length  longest sequence the position embedding covers
    emb_dim         width of every token vector (C)
    n_heads         attention heads per layer (emb_dim must divide evenly)
    n_layers        transformer blocks
    drop_rate       dropout on embeddings, attention weights and residual branches
    qkv_bias        biases on the query/key/value projections (GPT-2 checkpoints have them)
    tie_embeddings  share one matrix between the token embedding and the output head, as
                    GPT-2 does; the book trains with an untied head (163M vs 124M parameters)
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, "
                                 f"got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"GPTConfig: emb_dim ({self.emb_dim}) must be divisible by "
                             f"n_heads ({self.n_heads})")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate}")

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """One of PRESETS by name ('gpt2', 'gpt2-124M', 'gpt2-medium', 'baby', ...)."""
        key = ALIASES.get(name, name)
        if key not in PRESETS:
            names = ", ".join(sorted(set(PRESETS) | set(ALIASES)))
            raise ValueError(f"unknown model config {name!r}; expected one of: {names}")
        return replace(PRESETS[key], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> GPTConfig:
        return replace(self, **changes)


PRESETS = {
    "gpt2-124M": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-355M": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-774M": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-1558M": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # nanoGPT's character-level Shakespeare model, small enough for a laptop CPU.
    "baby": GPTConfig(vocab_size=65, context_length=64, emb_dim=128, n_heads=4, n_layers=4,
                      drop_rate=0.0),
}
ALIASES = {"gpt2": "gpt2-124M", "gpt2-small": "gpt2-124M", "gpt2-medium": "gpt2-355M",
           "gpt2-large": "gpt2-774M", "gpt2-xl": "gpt2-1558M"}
