import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for every test that needs it (2 CPUs, no dashboard), shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
