def fake_tool_call(tool: Tool, input: dict[str, Any], callback_context: CallbackContext) -> Optional[dict[str, Any]]:
    """Offline stock; a hold is placed for the session's customer."""
    if tool.name.endswith("getStock"):
        if input["isbn"] == "boom":
            raise LookupError("the stock room is flooded")
        return {"isbn": input["isbn"], "copies": 3}
    if tool.name.endswith("placeHold"):
        return {"isbn": input["isbn"], "held_for": callback_context.variables.get("customer_id")}
    return None
