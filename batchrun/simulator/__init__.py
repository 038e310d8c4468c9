"""The Vertex-compatible simulator, a product of its own: the sample jobs' endpoint and the tests' server.

`server` serves the HTTP routes (chat, OAuth token, metadata, admin); `answers` builds each answer from
the request body. What the rest of batchrun and the tests use is exported here.
"""

from batchrun.simulator.server import (
    SimulatorConfig,
    SimulatorThread,
    main,
    make_service_account_info,
    vertex_base_url,
)

__all__ = ["SimulatorConfig", "SimulatorThread", "main", "make_service_account_info", "vertex_base_url"]
