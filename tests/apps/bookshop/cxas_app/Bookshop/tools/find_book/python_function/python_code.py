CATALOGUE = {"dune": "9780441013593", "emma": "9780141439587"}


def find_book(title: str) -> dict:
    """Finds a book by title and prices it."""
    key = title.strip().lower()
    if key == "explode":
        raise ValueError("the catalogue is on fire")
    context.state["last_title"] = title
    isbn = CATALOGUE.get(key, "unknown")
    price = tools.price_book({"isbn": isbn})
    return {"title": title, "isbn": isbn, "price": price["price"], "level_seen": context.variables.get("member_level"),
            "trail": context.state.get("trail")}
