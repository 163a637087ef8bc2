def _user_text(callback_context):
    return callback_context.user_content.parts[0].text_or_transcript() if callback_context.user_content else ""


def before_model_callback(callback_context: CallbackContext, llm_request: LlmRequest) -> Optional[LlmResponse]:
    text = (_user_text(callback_context) or "").lower()
    if "opening hours" in text:
        return LlmResponse.from_parts([Part.from_text(f"We are open 9 to 5, {callback_context.state['tier']} customer.")])
    if "how many points" in text:
        points = tools.loyalty_points({"account_id": "ab"})
        return LlmResponse.from_parts([Part.from_text(f"You have {points['points']} points.")])
    if "goodbye" in text:
        return LlmResponse.from_parts([Part.from_text("Goodbye!"), Part.from_end_session(reason="the customer said goodbye")])
    return None
