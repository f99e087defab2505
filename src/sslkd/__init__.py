"""sslkd: self-supervised knowledge distillation of visual representations."""

__version__ = "0.1.0"
