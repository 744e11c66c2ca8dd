"""The NATS wire layer: connections, pull consumption, raw frames and JetStream acks, and ``internals``: the one
module that may touch nats-py's private attributes."""
