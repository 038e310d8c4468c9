"""The Vertex-compatible simulator, a product of its own: the sample jobs' endpoint and the tests' server.

`server` serves the HTTP routes (chat, OAuth token, metadata, admin); `answers` builds each answer from
the request body; `config` holds its knobs (quotas, faults, broken answers); `oauth` plays Google's credential
side (key files, token grants, issued tokens, metadata). What the rest of batchrun and the tests use is
exported here; `python -m batchrun.simulator` (`__main__`) runs it standalone.
"""

from batchrun.simulator.config import SimulatorConfig
from batchrun.simulator.oauth import make_service_account_info
from batchrun.simulator.server import SimulatorThread, vertex_base_url

__all__ = ["SimulatorConfig", "SimulatorThread", "make_service_account_info", "vertex_base_url"]
