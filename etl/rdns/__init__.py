"""Reverse DNS: the strategies (off, fake, ptr), the PTR resolver and its cache."""
