"""Users, sessions, rooms and messages: what quart-chat stores in Redis, as typed objects."""
