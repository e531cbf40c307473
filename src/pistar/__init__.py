"""pistar (π*): agentic multimodal LLMs — run, evaluate and improve language-model agents in real environments."""

from pistar.agent import Budget, ExpertAgent, LLMAgent, run_episode
from pistar.records import Action, ModelCall, Observation, Step, Trajectory

__version__ = "0.1.0"
__all__ = [
    "Action",
    "Budget",
    "ExpertAgent",
    "LLMAgent",
    "ModelCall",
    "Observation",
    "Step",
    "Trajectory",
    "run_episode",
]
