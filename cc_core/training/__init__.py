"""Training's pieces; ``cc_core.train.train`` is the recipe that puts them together.

- ``data``: records → token features; padded and packed collators.
- ``trainer``: ``CCTrainer`` (the HF Trainer subclass), its arguments and its tracking callback.
- ``checkpoints``: fingerprint, completion marker, rotation, resume point, counters, disk errors.
- ``divergence``: the non-finite loss / gradient guard.
- ``kernels``: Liger Kernel and ``torch.compile`` of the decoder layers.
- ``distributed``: DeepSpeed configs, process-group set-up, rank, barrier, totals over ranks.
"""
