"""The rules, by family: each is a small object with the state it needs, called once per
logged record, reporting through one :class:`~gradwandb.live.diagnosis.emit.Emitter`."""
