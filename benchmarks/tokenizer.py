"""Encode throughput of the from-scratch BPETokenizer (GPT-2's merges) against tiktoken.

    python benchmarks/tokenizer.py --data tinyshakespeare.txt [--repeat 5]

Without ``--data``, tiny Shakespeare is downloaded once into ~/.cache/tinygpt/.

Both encode the whole text in one call, in the same process, and must give the same ids.
"first" is the first encode with a freshly built tokenizer: BPETokenizer has to run BPE on
every distinct word then. "warm" is the best of ``--repeat`` further calls, when
BPETokenizer finds every word in its cache (tiktoken keeps no such cache: its first and warm
calls differ only by warm-up effects). The time to build each tokenizer from GPT-2's files is
reported apart.
"""

import argparse
import os
import platform
import time

from tinygpt.download import fetch_data
from tinygpt.tokenizer import BPETokenizer, gpt2_bpe_files, gpt2_encoding

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


def timed(function, *args):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def first_and_warm(encode, text, repeat):
    """Ids and seconds of the first call, and the best seconds of ``repeat`` more calls."""
    ids, first = timed(encode, text)
    warm = min(timed(encode, text)[1] for _ in range(repeat))
    return ids, first, warm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", metavar="PATH", help="text file (default: tiny Shakespeare)")
    parser.add_argument("--repeat", type=int, default=5, help="warm calls to take the best of")
    args = parser.parse_args(argv)
    text = fetch_data(TINYSHAKESPEARE_URL, args.data).read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6

    gpt2_encoding.cache_clear()
    enc, enc_build = timed(gpt2_encoding)
    tok, tok_build = timed(BPETokenizer.from_gpt2_files, *gpt2_bpe_files())

    encode_tiktoken = lambda t: enc.encode(t, allowed_special="all")  # noqa: E731
    encode_scratch = lambda t: tok.encode(t, allowed_special="all")  # noqa: E731
    ref_ids, ref_first, ref_warm = first_and_warm(encode_tiktoken, text, args.repeat)
    ids, first, warm = first_and_warm(encode_scratch, text, args.repeat)
    if ids != ref_ids:
        raise SystemExit("BPETokenizer and tiktoken disagree on this text")

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"text: {megabytes:.2f} MB, {len(ids)} tokens (identical ids)")
    print(f"build from GPT-2's files: tiktoken {enc_build:.2f} s, BPETokenizer {tok_build:.2f} s")
    print(f"{'':14}{'first MB/s':>12}{'warm MB/s':>12}")
    print(f"{'tiktoken':14}{megabytes / ref_first:12.2f}{megabytes / ref_warm:12.2f}")
    print(f"{'BPETokenizer':14}{megabytes / first:12.2f}{megabytes / warm:12.2f}")
    print(f"{'ratio':14}{ref_first / first:12.2f}{ref_warm / warm:12.2f}"
          "   (BPETokenizer / tiktoken throughput)")


if __name__ == "__main__":
    main()
