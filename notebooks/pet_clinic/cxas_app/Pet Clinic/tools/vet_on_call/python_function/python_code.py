def vet_on_call(day: str) -> dict:
    """Which vet works on a given day."""
    return {"day": day, "vet": "Dr. Rivera" if day in ("Monday", "Wednesday", "Friday") else "Dr. Okafor"}
