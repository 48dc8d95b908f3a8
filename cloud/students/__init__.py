"""Device student architectures, their preprocessing, training and checkpoints (torch, cloud side)."""

from cloud.students.architectures import STUDENTS, create_student, list_students

__all__ = ["STUDENTS", "create_student", "list_students"]
