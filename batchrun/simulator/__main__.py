"""`python -m batchrun.simulator`: the simulator standalone, in its own process."""

from batchrun.simulator.server import main

main()
