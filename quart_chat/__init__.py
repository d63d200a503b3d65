"""quart-chat: a self-hosted, real-time group chat for teams."""
