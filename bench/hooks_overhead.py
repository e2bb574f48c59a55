"""Forward-pass overhead of the capture and connection hooks vs the plain model, same run.

    python bench/hooks_overhead.py --model smollm2-135m-instruct
    python bench/hooks_overhead.py --model tiny-random-llama            # seconds

Plain, capture (all L layers read at the anchor) and connection (one vector added at the
anchor) forwards of the same batch are timed round-robin; target ratio ≤ 1.05.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footer, interleaved, load_model  # noqa: E402

from cc_core.modeling import capturing, connected  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, _ = load_model(args.model, dtype, args.device)
    model.eval()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=args.device)
    anchor = torch.full((args.batch,), args.seq - 1, device=args.device)
    vectors = torch.randn(args.batch, model.config.hidden_size, device=args.device, dtype=dtype)

    def plain():
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    def capture():
        with torch.no_grad(), capturing(model, anchor) as cap:
            model(input_ids=ids, use_cache=False)
            cap.vectors()

    def connect():
        with torch.no_grad(), connected(model, anchor, vectors):
            model(input_ids=ids, use_cache=False)

    times = interleaved({"plain": plain, "capture": capture, "connected": connect}, args.repeats, args.device)
    print(f"model={args.model} device={args.device} batch={args.batch} seq={args.seq} layers="
          f"{model.config.num_hidden_layers}")
    for name, seconds in times.items():
        print(f"  {name:10s} {seconds * 1000:9.2f} ms (median of {args.repeats})")
    footer({"capture_over_plain": times["capture"] / times["plain"],
            "connected_over_plain": times["connected"] / times["plain"]})


if __name__ == "__main__":
    main()
