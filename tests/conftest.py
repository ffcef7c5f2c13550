pytest_plugins = ["tests.integration.pg_fixtures"]
