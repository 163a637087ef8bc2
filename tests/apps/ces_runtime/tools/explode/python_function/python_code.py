def explode(reason: str) -> dict:
    """Always fails."""
    return _fail(reason)


def _fail(reason):
    raise ValueError(f"boom: {reason}")
