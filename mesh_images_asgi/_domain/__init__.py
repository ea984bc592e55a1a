"""The domain: request schemas, the catalog (``_domain/models.toml``), capabilities, cost, the job
types
that providers take and return."""
