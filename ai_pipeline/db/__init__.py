"""Database access: URLs and engines, the schema, migrations and the request state machine."""
