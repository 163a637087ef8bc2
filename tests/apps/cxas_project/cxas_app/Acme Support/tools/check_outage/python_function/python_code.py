def check_outage(zip_code: str) -> dict:
    """Checks for a service outage at a ZIP code.

    Args:
        zip_code: A five-digit US ZIP code.
    """
    return {"zip_code": zip_code, "outage": zip_code.startswith("9"), "restore_eta": "18:00"}
