def after_agent_callback(callback_context: CallbackContext) -> Optional[Content]:
    callback_context.state["last_agent"] = callback_context.agent_name
    return None
