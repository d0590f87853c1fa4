"""How the application hears that work is done: the completion push (``_completions``) that
``wait`` (``_waiting``) and, later, webhooks and the asyncio API stand on.

Internal: nothing here is public yet. It imports the model and the protocols, never the processor.
"""

__all__: list[str] = []
