def before_agent_callback(callback_context: CallbackContext) -> dict:
    text = callback_context.user_content.parts[0].text_or_transcript() if callback_context.user_content else ""
    if "i am 12" in text.lower():
        return {"decision": "TRIGGER", "reason": "a minor"}
    return {"decision": "OK", "reason": "fine"}
