"""How the application hears that work is done: the completion push that ``wait`` (and, later,
webhooks and the asyncio API) stand on."""
