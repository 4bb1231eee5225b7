"""The modes of scripts/bench, one module each, and what they share (common).

scripts/bench is the entry point: it parses the arguments and calls core.core,
postgres.postgres, s3.s3 or kafka.kafka. Run it, not these modules."""
