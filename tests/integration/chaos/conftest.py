from tests.integration.chaos.harness import fake_process

__all__ = ["fake_process"]
