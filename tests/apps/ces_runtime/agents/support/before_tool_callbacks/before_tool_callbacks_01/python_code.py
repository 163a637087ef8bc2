def before_tool_callback(tool: Tool, input: dict, callback_context: CallbackContext) -> Optional[dict]:
    if tool.name == "lookup_account" and input.get("account_id") == "blocked":
        return {"error": "account blocked by before_tool_callback"}
    return None
