"""Free loopback ports (one home: `stack.ports`, shipped so the demo and bench/ use it too)."""

from stack.ports import free_port

__all__ = ["free_port"]
