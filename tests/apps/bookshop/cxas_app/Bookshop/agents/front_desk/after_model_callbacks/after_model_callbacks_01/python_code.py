def after_model_callback(callback_context: CallbackContext, llm_response: LlmResponse) -> Optional[LlmResponse]:
    text = llm_response.text_or_transcript()
    if text and "£" in text:
        return LlmResponse.from_parts([Part.from_text(text + " (prices include VAT)")])
    return None
