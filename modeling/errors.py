"""Errors raised by the models and the inference entry point."""


class RestorationInputError(ValueError):
    """Raised for inputs a restoration model cannot process (wrong shape, channels, dtype, NaN/inf, labels)."""


__all__ = ["RestorationInputError"]
