"""RecThinker: an LLM recommendation agent that investigates (analyze -> plan -> act) before it ranks."""

from recthinker.errors import ConfigError, DataError, RecThinkerError
from recthinker.types import Episode, ItemId, Ranker, Ranking, UserId

__all__ = ["ConfigError", "DataError", "Episode", "ItemId", "Ranker", "Ranking", "RecThinkerError", "UserId"]
__version__ = "0.1.0"
