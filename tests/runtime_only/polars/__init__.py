"""Put first on the CLI's path in the tests: batchrun's runtime depends on pyarrow alone, and any import of polars
from it (the tests and analysts use polars; the container image does not hold it) fails the test that made it."""

raise ImportError("batchrun imported polars: its runtime must not need it (pyproject.toml lists it for tests only)")
