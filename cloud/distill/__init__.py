"""PromptKD-style distillation of the teacher into the device student."""
