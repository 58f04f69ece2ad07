"""Where stream entries go (:class:`~imapsvc.interfaces.ISink`) and the relay
that moves them there from the store's outbox.

- :mod:`imapsvc.sink.redis_stream`: ``RedisStreamSink`` (production, XADD).
- :mod:`imapsvc.sink.jsonl`: ``JsonLinesSink`` (embedded default, a file).
- :mod:`imapsvc.sink.memory`: ``MemorySink`` (tests).
- :mod:`imapsvc.sink.relay`: ``Relay``, outbox -> sink, at-least-once.
"""
