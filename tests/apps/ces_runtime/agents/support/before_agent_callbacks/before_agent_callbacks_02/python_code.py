def before_agent_callback(callback_context):
    callback_context.state["order"] = callback_context.state["order"] + ",second"
