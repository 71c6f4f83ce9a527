"""Local stand-ins for the networked world: fake GitHub and StackExchange servers, a tiny model."""
