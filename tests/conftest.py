"""Shared pytest fixtures: devices to run on and seeded random generators."""
import zlib

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param


@pytest.fixture(autouse=True)
def fresh_seed(request):
    # A different but reproducible seed per test, so inputs are fresh yet failures replay.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
