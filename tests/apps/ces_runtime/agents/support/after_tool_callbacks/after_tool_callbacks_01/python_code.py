def after_tool_callback(tool: Tool, input: dict, callback_context: CallbackContext, tool_response: dict) -> Optional[dict]:
    if tool.name == "explode":
        raise RuntimeError("after_tool_callback failed on purpose")
    if tool.name == "lookup_account" and "error" not in tool_response:
        return {**tool_response, "stamped_by": "after_tool_callback", "seen_points": callback_context.state.get("points_checked")}
    return None
