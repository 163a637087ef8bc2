def price_book(isbn: str) -> dict:
    """The price of a book, in pounds."""
    context.state["priced"] = context.state.get("priced", 0) + 1
    return {"isbn": isbn, "price": 8.99 if context.state.get("member_level") == "standard" else 7.99}
