def before_model_callback(callback_context, llm_request):
    return LlmResponse.from_parts([Part.from_text("THE DISABLED CALLBACK RAN")])
