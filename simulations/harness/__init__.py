"""What every simulation and benchmark runs on: processes as users start them, the simulated cloud, memory.

``simulations.fleet`` (the main job) and ``simulations.bench`` (the benchmarks) both import
from here and never from each other (an import-linter contract).
"""
