def loyalty_points(account_id: str) -> dict:
    """An account's loyalty points."""
    context.state["points_checked"] = True
    return {"points": len(account_id) * 100}
