def before_tool_callback(tool: Tool, input: dict, callback_context: CallbackContext) -> Optional[dict]:
    if tool.name == "find_book" and "forbidden" in str(input.get("title", "")).lower():
        return {"error": "that title is not sold here"}
    return None
