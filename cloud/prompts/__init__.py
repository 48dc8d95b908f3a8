"""Prompt learners over the teacher's text tower (CoOp)."""

from cloud.prompts.base import PromptLearner
from cloud.prompts.coop import CoOpPromptLearner

__all__ = ["CoOpPromptLearner", "PromptLearner"]
