"""Test-wide settings: runtime shape checks on, deterministic hypothesis profile, 1 thread."""

import os

os.environ.setdefault("VALUE_ROUTING_TYPECHECK", "1")  # before value_routing is imported

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(1)  # pytest-xdist runs one worker per core


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fresh_dynamo():
    """Reset dynamo before and after: compiled frames of one test must not make later tests'
    shapes "automatically dynamic" (SDPA's is_causal then becomes a SymBool)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
