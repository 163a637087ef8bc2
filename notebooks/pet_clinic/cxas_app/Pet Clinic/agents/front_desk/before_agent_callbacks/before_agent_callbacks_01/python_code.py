def before_agent_callback(callback_context: CallbackContext) -> Optional[Content]:
    # Session state persists across turns: count how often the owner wrote.
    callback_context.state["messages"] = callback_context.state.get("messages", 0) + 1
    return None
