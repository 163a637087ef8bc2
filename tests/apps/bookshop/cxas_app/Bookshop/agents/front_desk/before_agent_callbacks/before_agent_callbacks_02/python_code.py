def before_agent_callback(callback_context: CallbackContext) -> Optional[Content]:
    return Content(parts=[Part.from_text("THE DISABLED CALLBACK RAN")])
