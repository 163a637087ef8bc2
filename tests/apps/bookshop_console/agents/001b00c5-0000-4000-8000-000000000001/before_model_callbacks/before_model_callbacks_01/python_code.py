def before_model_callback(callback_context: CallbackContext, llm_request: LlmRequest) -> Optional[LlmResponse]:
    text = callback_context.user_content.parts[0].text_or_transcript() if callback_context.user_content else ""
    callback_context.state["trail"] = callback_context.state.get("trail", "") + ",before_model"
    if "opening hours" in text.lower():
        return LlmResponse.from_parts([Part.from_text(
            f"We open at 9, {callback_context.state['member_level']} member (turn {callback_context.state['turns']}).")])
    if "bye" in text.lower():
        return LlmResponse.from_parts([Part.from_text("Happy reading!"), Part.from_end_session(reason="customer left")])
    if "crash the callback" in text.lower():
        return {}["no such key"]
    return None
