"""Iteration-level simulator of an LLM serving engine (issue 3): the host that runs the engine-free policies
against a latency model. See :mod:`eval.sim.engine`."""

from eval.sim.build import make_policy, sim_capabilities
from eval.sim.engine import PolicyError, SimResult, SimStats, SimulationStalled, Simulator

__all__ = ["PolicyError", "SimResult", "SimStats", "SimulationStalled", "Simulator", "make_policy", "sim_capabilities"]
