"""The Prefect flow's device pool: one task per GPU at a time, models kept per device.

    pytest tests/unit/test_flow_devices.py
"""

from __future__ import annotations

import threading
import time

import torch

from flows.evaluation import DevicePool


def test_tasks_never_share_a_gpu_and_every_gpu_is_used(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    pool = DevicePool()
    busy: set[str] = set()
    used: list[str] = []
    clash = threading.Event()
    lock = threading.Lock()

    def task() -> None:
        with pool.device(num_gpus=8) as device:  # asks for more GPUs than the node has: 3 are used
            with lock:
                if device in busy:
                    clash.set()
                busy.add(device)
                used.append(device)
            time.sleep(0.02)
            with lock:
                busy.discard(device)

    threads = [threading.Thread(target=task) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not clash.is_set()
    assert sorted(set(used)) == ["cuda:0", "cuda:1", "cuda:2"] and len(used) == 12


def test_cpu_is_one_slot_and_models_are_reused_per_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pool = DevicePool()
    loads = []

    def load(name):
        return lambda: loads.append(name) or name

    with pool.device(num_gpus=4) as device:
        assert device == "cpu"
        assert pool.generator(device, ("cc", "h"), load("cc")) == "cc"
        assert pool.generator(device, ("cc", "h"), load("cc-again")) == "cc"  # kept
        assert pool.generator(device, ("sft", "h"), load("sft")) == "sft"  # another model replaces it
    assert loads == ["cc", "sft"]
