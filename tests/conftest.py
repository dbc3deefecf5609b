"""Test-session fixtures shared by every test module.

One local Ray per session (pinned CPUs, no dashboard), started lazily by the first test that asks for
it. Tiny models and worlds are built once per session into a temporary folder by the fixture modules
under ``tests/fixtures`` (one module per area, so areas can grow independently).
"""

from __future__ import annotations

import os
import shutil

import pytest

# Nothing in the test session may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.world",
    "tests.fixtures.student",
    "tests.fixtures.serve",
    "tests.fixtures.index",
    "tests.fixtures.pipeline",
    "tests.fixtures.evaluate",
    "tests.fixtures.train",
    "tests.fixtures.teacher_llm",
    "tests.fixtures.checks",
]

RAY_NUM_CPUS = int(os.environ.get("EDRAY_TEST_RAY_CPUS", "4"))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by the whole test session.

    Logical CPUs are oversubscribed (4 on a 2-core machine by default) so that an actor pool plus its
    read tasks can be scheduled together; see the Ray-on-2-cores notes in docs/install.md.
    """
    import ray

    if not ray.is_initialized():
        # address="local": never join a cluster someone started with `ray start` on this machine.
        ray.init(
            address="local",
            num_cpus=RAY_NUM_CPUS,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            ignore_reinit_error=True,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


def has_executable(name: str) -> bool:
    return shutil.which(name) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device is visible (they run unchanged where one is)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)
