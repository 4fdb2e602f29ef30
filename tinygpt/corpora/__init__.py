"""Two small public-domain texts shipped inside the package, so training works offline.

* ``tinyshakespeare.txt`` — Karpathy's Tiny Shakespeare (1.1 MB, 40,000 lines of the plays),
  what nanoGPT's character-level baby GPT learns from; ``tinygpt train``'s default ``--data``.
* ``the-verdict.txt`` — Edith Wharton's short story "The Verdict" (1908; 20 kB), the text the
  book tokenizes in chapter 2 and pretrains on in chapter 5.
"""

from __future__ import annotations

from pathlib import Path

SHAKESPEARE = "tinyshakespeare.txt"
VERDICT = "the-verdict.txt"


def corpus_path(name: str) -> Path:
    """The path of a bundled text (``SHAKESPEARE`` or ``VERDICT``)."""
    path = Path(__file__).with_name(name)
    if not path.is_file():
        raise FileNotFoundError(f"no bundled text named {name!r} (there are {SHAKESPEARE!r} "
                                f"and {VERDICT!r})")
    return path
