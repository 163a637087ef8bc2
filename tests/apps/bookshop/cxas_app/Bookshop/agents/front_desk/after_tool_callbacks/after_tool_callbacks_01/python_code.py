def after_tool_callback(tool: Tool, input: dict, callback_context: CallbackContext, tool_response: dict) -> Optional[dict]:
    if tool.name == "find_book":
        return {**tool_response, "stamped": callback_context.state.get("last_title")}
    return None
