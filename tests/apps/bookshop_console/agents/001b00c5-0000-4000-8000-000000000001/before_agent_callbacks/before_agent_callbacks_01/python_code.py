def before_agent_callback(callback_context: CallbackContext) -> Optional[Content]:
    callback_context.state["turns"] = callback_context.state.get("turns", 0) + 1
    callback_context.state["trail"] = "before_agent"
    return None
