def before_model_callback(callback_context: CallbackContext, llm_request: LlmRequest) -> Optional[LlmResponse]:
    # A fixed answer needs no model: returning a response skips the model call.
    said = callback_context.user_content.parts[0].text_or_transcript() if callback_context.user_content else ""
    if "open" in said.lower() and "hour" in said.lower():
        return LlmResponse.from_parts([Part.from_text("We're open 8 to 6, Monday to Saturday.")])
    return None
