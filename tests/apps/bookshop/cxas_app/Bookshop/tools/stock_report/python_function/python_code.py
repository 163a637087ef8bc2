def stock_report(isbn: str) -> dict:
    """How many copies of a title are in stock, through the inventory API."""
    stock = tools.inventory_api_getStock({"isbn": isbn})
    return {"isbn": isbn, "copies": stock.json().get("copies"), "error": stock.get("error")}
