def lookup_account(account_id: str) -> dict:
    """Looks up an account's balance and loyalty points."""
    context.state["last_account"] = account_id
    points = tools.loyalty_points({"account_id": account_id})
    lookups = context.state.get("lookups", 0) + 1
    context.state["lookups"] = lookups
    return {
        "account_id": account_id,
        "balance": 42,
        "points": points["points"],
        "lookups": lookups,
        "tier": context.state.get("tier"),
        "points_checked_seen": context.state.get("points_checked"),
        "function_call_id": context.function_call_id,
    }
