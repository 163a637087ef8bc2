def before_model_callback(callback_context: CallbackContext, llm_request: LlmRequest) -> dict:
    text = callback_context.user_content.text_or_transcript() if callback_context.user_content else ""
    if "refund" in text.lower():
        return {"decision": "TRIGGER", "reason": "the user asked for a refund"}
    return {"decision": "OK", "reason": "no refund"}
