"""Prompt learners over the teacher's text tower (CoOp)."""

from cloud.coop.base import PromptLearner
from cloud.coop.coop import CoOpPromptLearner

__all__ = ["CoOpPromptLearner", "PromptLearner"]
