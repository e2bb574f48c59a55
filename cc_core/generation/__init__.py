"""Generation's pieces; ``cc_core.generate.Generator`` puts them together.

- ``batching``: which prompts share a batch (length-sorted, least padding) and ``batch_size="auto"``.
- ``decoding``: forward passes over a KV cache (dynamic or static, optionally compiled) and the greedy loop.
- ``prefill``: the CC prefill of the ``transform`` and ``parallel`` modes (the connection at the anchor).

Loading the model, the Decision Maker and the Transform Matrix is ``cc_core.modeling.loading``.
"""
