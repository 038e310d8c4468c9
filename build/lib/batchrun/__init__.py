"""batchrun: bulk Chat Completions jobs (Vertex AI Gemini or any OpenAI-compatible server) to Parquet."""

from batchrun.errors import BatchrunError, InputError, OutputError, SpecError, StoppedError
from batchrun.results import assistant_message
from batchrun.spec import JobSpec, load_spec

__all__ = [
    "BatchrunError",
    "InputError",
    "JobSpec",
    "OutputError",
    "SpecError",
    "StoppedError",
    "assistant_message",
    "load_spec",
]
__version__ = "0.1.0"
