"""The CC-Tuning mechanism on stock Hugging Face decoders (hooks, not forks)."""

from cc_core.modeling.architectures import ARCHITECTURES, ArchPaths, arch_paths
from cc_core.modeling.cc_model import CCOutput, CCTuningModel
from cc_core.modeling.checkpoint import read_cc_metadata, save_cc_checkpoint
from cc_core.modeling.decision import DecisionMaker
from cc_core.modeling.hooks import capture_ffn, capturing, connected
from cc_core.modeling.loading import load_cc_checkpoint

__all__ = [
    "ARCHITECTURES", "ArchPaths", "arch_paths", "CCOutput", "CCTuningModel", "DecisionMaker",
    "capture_ffn", "capturing", "connected", "load_cc_checkpoint", "read_cc_metadata", "save_cc_checkpoint",
]
