"""How the application hears that work is done: the completion push (``_completions``) that
``wait`` (``_waiting``), the asyncio waiters of ``AsyncProcessor.wait`` and of the HTTP
long-poll and status stream (``_asyncwait``) and, later, webhooks stand on.

Internal: nothing here is public yet. It imports the model and the protocols, never the processor.
"""

__all__: list[str] = []
