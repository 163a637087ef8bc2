"""Stored sessions: CES conversations (AgentService) and ADK session services."""
