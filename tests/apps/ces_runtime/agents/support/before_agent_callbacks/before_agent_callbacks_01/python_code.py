def before_agent_callback(callback_context: CallbackContext) -> Optional[Content]:
    state = callback_context.state
    state["visits"] = state.get("visits", 0) + 1
    state["order"] = "first"
    if callback_context.user_input_text.strip().lower() == "ping":
        return Content(parts=[Part.from_text("pong from before_agent_callback")])
    return None
