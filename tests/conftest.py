import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked ``no_live_ray`` run first, before the session's Ray exists: Ray's ``address="auto"``
    finds any Ray running on the machine, and they check what happens when none does."""
    items.sort(key=lambda item: item.get_closest_marker("no_live_ray") is None)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for every test that needs it (2 CPUs, no dashboard), shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
