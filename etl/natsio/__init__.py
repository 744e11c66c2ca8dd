"""The NATS wire layer: connections, pull consumption, raw frames and JetStream acks."""
