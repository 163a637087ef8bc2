def lookup_order(order_id: str) -> dict:
    """Looks up an Acme order by its id.

    Args:
        order_id: The order id, e.g. A1234.
    """
    order = order_id.strip().upper()
    return {"order_id": order, "status": "shipped", "eta": "2026-04-18", "refund": "issued 2026-03-02"}
