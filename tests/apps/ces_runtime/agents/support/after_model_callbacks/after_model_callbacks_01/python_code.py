def after_model_callback(callback_context: CallbackContext, llm_response: LlmResponse) -> Optional[LlmResponse]:
    text = llm_response.text_or_transcript()
    if "balance" in text:
        callback_context.state["reviewed"] = True
        return LlmResponse.from_parts([Part.from_text(text + " (reviewed)")])
    return None
